"""The cached applied rate: its variables, and how they travel through files.

The state lives in one small object attached to the optimizer instead of in
``optimizer.variables``. Plain Keras optimizers refuse a ``.keras`` /
``.weights.h5`` entry whose variable count differs from theirs, and
``tf.train.Checkpoint`` matches ``optimizer.variables`` by position; keeping the
count and the positions exactly those of the plain optimizer is what makes files
interchangeable in both directions. The object is saved as a group of its own
(``.keras`` / ``.weights.h5``) and as a named dependency (``tf.train.Checkpoint``),
both of which a plain optimizer simply ignores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from . import _keras_private

RATE_KEY = "applied_learning_rate"
COUNT_KEY = "update_count"
# No update has written the cache: ``current_learning_rate`` derives the value.
NO_UPDATE = -1

# Opt-in state (see _plateau, _history, _diagnostics), each created only when
# asked for (or brought by a file) and saved as a group of entries.
MULTIPLIER_KEY = "learning_rate_multiplier"
HISTORY_RATES_KEY = "rate_history"
HISTORY_UPDATES_KEY = "rate_history_updates"
DIAGNOSTIC_KEYS = ("gradient_norm", "update_norm", "update_to_weight_ratio")
FEATURE_KEYS = {
    "multiplier": (MULTIPLIER_KEY,),
    "history": (HISTORY_RATES_KEY, HISTORY_UPDATES_KEY),
    "diagnostics": DIAGNOSTIC_KEYS,
}
CORE_KEYS = (RATE_KEY, COUNT_KEY)

# The entries of this state read from a file; None: the file had none (it was
# written by the plain optimizer).
FileEntries = dict[str, np.ndarray]

if TYPE_CHECKING or keras.backend.backend() != "tensorflow":
    _Trackable = object
else:  # pragma: no branch - the TensorFlow backend is the one CI runs first.
    import tensorflow as tf

    # A tf.Module is tracked by name by tf.train.Checkpoint (including deferred
    # restoration into an optimizer that is built later).
    _Trackable = tf.Module


@dataclasses.dataclass
class Requests:
    """Opt-in features asked for before the state's variables exist."""

    multiplier: int = 0
    history: int = 0  # the buffer size
    diagnostics: int = 0

    def items(self) -> list[tuple[str, int]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]


@dataclasses.dataclass
class PendingRestore:
    """State read from a file before the optimizer had variables to hold it."""

    source: str
    # The optimizer's slots from the file (None: only the cache is waiting).
    slot_values: list[np.ndarray] | None = None
    # Step counter and rate as they were before the load, to roll back to.
    previous_prefix: list[np.ndarray] | None = None
    # Loaded under `load_weights(..., skip_mismatch=True)`.
    lenient: bool = False
    # This state's entries from the file; None: the file lacked them.
    cached: FileEntries | None = None


class AppliedRateState(_keras_private.KerasSaveable, _Trackable):
    """Holds the rate the last update applied and the update count it belongs to.

    ``update_count`` equals ``optimizer.iterations`` right after the update that
    wrote ``applied_learning_rate``. Whenever the two disagree (a file or
    checkpoint restored iterations but not the cache, or no update ran yet) the
    cached value is stale and the rate is derived from the schedule instead.
    """

    def __init__(self) -> None:
        if _Trackable is not object:
            super().__init__(name="applied_learning_rate_state")
        self.applied_learning_rate: Any = None
        self.update_count: Any = None
        # Opt-in: the plateau multiplier, the history buffer, diagnostics.
        self.learning_rate_multiplier: Any = None
        self.rate_history: Any = None
        self.rate_history_updates: Any = None
        self.gradient_norm: Any = None
        self.update_norm: Any = None
        self.update_to_weight_ratio: Any = None
        # Features asked for before the variables exist (a plain object, not a
        # dict: tf.Module would track a dict as a checkpoint dependency).
        self.requested = Requests()
        # The optimizer this state belongs to, to create variables next to its
        # own when a file brings a feature (a weak reference: no cycle, and not
        # something Keras or TensorFlow would try to save).
        self.owner: Callable[[], Any] = lambda: None
        self.pending: PendingRestore | None = None
        # Set by the owning optimizer's load_own_variables just before Keras
        # visits this object in the same load: "loaded", "deferred", or None
        # (the optimizer's own state was not restored; leave the cache alone).
        self.owner_load: str | None = None

    def _lookup_dependency(self, name: str, cached_dependencies: Any = None) -> Any:
        # tf.train.Checkpoint asks for each child it holds by name: a
        # multiplier in the checkpoint is created here so that it is restored
        # (training state must not be dropped). See _keras_private.
        owner = self.owner()
        wanted = (
            name == MULTIPLIER_KEY
            and self.learning_rate_multiplier is None
            and not self.__dict__.get("_creating_feature", False)
        )
        if wanted and owner is not None and self.has_variables:
            self.create_feature(owner, "multiplier")
            cached_dependencies = None  # computed before it existed
        return super()._lookup_dependency(name, cached_dependencies)

    def _obj_type(self) -> str:
        # Only selects the attribute skip-list Keras uses while walking this
        # object; "Optimizer" keeps the walk to our own attributes.
        return "Optimizer"

    @property
    def has_variables(self) -> bool:
        return self.applied_learning_rate is not None

    def has(self, feature: str) -> bool:
        """Whether the variables of an opt-in feature exist."""
        return getattr(self, FEATURE_KEYS[feature][0]) is not None

    def all_variables(self) -> list[Any]:
        """Every variable of this state, in a fixed order (JAX carries these)."""
        if not self.has_variables:
            return []
        names = list(CORE_KEYS)
        for feature, keys in FEATURE_KEYS.items():
            if self.has(feature):
                names += keys
        return [getattr(self, name) for name in names]

    def create_variables(self, optimizer: Any, rate_dtype: str) -> None:
        """Creates the two scalar variables, next to the optimizer's own."""
        self.applied_learning_rate = _variable(optimizer, RATE_KEY, np.zeros((), dtype=rate_dtype))
        counter = _keras_private.raw_step_counter(optimizer)
        self.update_count = _variable(
            optimizer, COUNT_KEY, np.full((), NO_UPDATE, dtype=counter.dtype)
        )
        if _keras_private.checkpoint_waits_for(self, MULTIPLIER_KEY):
            # A tf.train.Checkpoint restored before the build holds one: it
            # is restored into the variable as soon as the variable exists.
            self.requested.multiplier = 1
        for feature, size in self.requested.items():
            if size:
                self.create_feature(optimizer, feature, size)

    def create_feature(self, optimizer: Any, feature: str, size: int = 0) -> None:
        """Creates the variables of an opt-in feature (once; eagerly)."""
        if self.has(feature):
            return
        # (Tracking the new attribute asks _lookup_dependency about its name.)
        self.__dict__["_creating_feature"] = True
        try:
            self._create_feature(optimizer, feature, size)
        finally:
            self.__dict__["_creating_feature"] = False

    def _create_feature(self, optimizer: Any, feature: str, size: int) -> None:
        rate_dtype = self.applied_learning_rate.dtype
        counter_dtype = self.update_count.dtype
        with _keras_private.eager_scope(), _keras_private.strategy_scope(optimizer):
            if feature == "multiplier":
                self.learning_rate_multiplier = _variable(
                    optimizer, MULTIPLIER_KEY, np.ones((), dtype=rate_dtype)
                )
            elif feature == "history":
                self.rate_history = _variable(
                    optimizer, HISTORY_RATES_KEY, np.zeros((size,), dtype=rate_dtype)
                )
                self.rate_history_updates = _variable(
                    optimizer,
                    HISTORY_UPDATES_KEY,
                    np.full((size,), NO_UPDATE, dtype=counter_dtype),
                )
            else:
                for key in DIAGNOSTIC_KEYS:
                    setattr(self, key, _variable(optimizer, key, np.full((), np.nan, "float32")))

    @property
    def history_size(self) -> int:
        return 0 if self.rate_history is None else int(self.rate_history.shape[0])

    def write(self, rate: Any, count: Any) -> None:
        self.applied_learning_rate.assign(rate)
        self.update_count.assign(count)
        if self.rate_history is not None:
            # Update n goes to slot (n - 1) % size: a ring buffer whose slots
            # say which update they hold, so no separate head is needed.
            ops = keras.ops
            size = self.history_size
            slot = ops.mod(ops.subtract(count, 1), size)
            here = ops.equal(ops.arange(size, dtype=count.dtype), slot)
            self.rate_history.assign(ops.where(here, rate, self.rate_history.value))
            self.rate_history_updates.assign(
                ops.where(here, count, self.rate_history_updates.value)
            )

    def assign_from_file(self, cached: FileEntries | None) -> None:
        """Restores this state from a file's entries (None: a plain file)."""
        cached = cached or {}
        owner = self.owner()
        if owner is not None and MULTIPLIER_KEY in cached:
            # Training state, not an observation: the rate depends on it.
            self.create_feature(owner, "multiplier")
        if owner is not None and HISTORY_RATES_KEY in cached:
            # Cheap to keep, and what plots of a saved model show. (Not so
            # diagnostics: they cost a copy of the weights per update and
            # describe only the last one; a file's are dropped unless the
            # optimizer records them too.)
            self.create_feature(owner, "history", len(cached[HISTORY_RATES_KEY]))
        with _keras_private.eager_scope():
            if RATE_KEY in cached:
                self.applied_learning_rate.assign(cached[RATE_KEY])
                self.update_count.assign(cached[COUNT_KEY])
            else:
                self.update_count.assign(NO_UPDATE)
            if self.learning_rate_multiplier is not None:
                # The plain optimizer's state has no multiplier: it trained at 1.
                self.learning_rate_multiplier.assign(cached.get(MULTIPLIER_KEY, 1.0))
            if self.rate_history is not None:
                rates, updates = rebucket(
                    cached.get(HISTORY_RATES_KEY),
                    cached.get(HISTORY_UPDATES_KEY),
                    self.history_size,
                    self.rate_history.dtype,
                    self.rate_history_updates.dtype,
                )
                self.rate_history.assign(rates)
                self.rate_history_updates.assign(updates)
            if self.gradient_norm is not None:
                for key in DIAGNOSTIC_KEYS:
                    getattr(self, key).assign(cached.get(key, np.nan))

    # --- Keras saving (.keras / .weights.h5) ------------------------------

    def save_own_variables(self, store: Any) -> None:
        if self.has_variables:
            for variable in self.all_variables():
                store[variable.name] = np.asarray(keras.ops.convert_to_numpy(variable))
        elif self.pending is not None and self.pending.cached is not None:
            for key, value in self.pending.cached.items():
                store[key] = value

    def pending_rate(self, update_count: Any) -> np.ndarray | None:
        """The cached rate loaded from a file and not applied yet, if current."""
        cached = None if self.pending is None else self.pending.cached
        if not cached or int(cached[COUNT_KEY]) != int(update_count):
            return None
        return cached[RATE_KEY]

    def load_own_variables(self, store: Any) -> None:
        owner_load, self.owner_load = self.owner_load, None
        if owner_load is None:
            return
        cached = read_entries(store)
        if owner_load == "deferred" or not self.has_variables:
            if self.pending is None:
                self.pending = PendingRestore(source=_keras_private.describe_store(store))
            self.pending.cached = cached
        else:
            self.assign_from_file(cached)


def host_array(value: Any) -> np.ndarray:
    """A tensor's or variable's value on the host, by the backend's shortest path.

    ``keras.ops.convert_to_numpy`` spends a tenth of a millisecond on checks
    per call, several times the read itself, and loggers read several values
    per interval.
    """
    if isinstance(value, keras.Variable):
        value = value.value
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError):  # e.g. a distributed variable
        return np.asarray(keras.ops.convert_to_numpy(value))


def _variable(optimizer: Any, name: str, initial: np.ndarray) -> Any:
    # Constant initial values: under `fit` the optimizer is built inside the
    # traced train function, where initial values that read other variables
    # cannot be lifted out (XLA).
    with keras.name_scope(optimizer.name, caller=optimizer):
        return keras.Variable(
            initializer=initial,
            dtype=initial.dtype,
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
            name=name,
        )


def rebucket(
    rates: np.ndarray | None,
    updates: np.ndarray | None,
    size: int,
    rate_dtype: Any,
    update_dtype: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """A history from a file, laid out for a buffer of ``size`` slots.

    Files written with another size keep their most recent entries.
    """
    new_rates = np.zeros((size,), dtype=keras.backend.standardize_dtype(rate_dtype))
    new_updates = np.full((size,), NO_UPDATE, dtype=keras.backend.standardize_dtype(update_dtype))
    if rates is None or updates is None:
        return new_rates, new_updates
    kept = sorted((int(u), r) for u, r in zip(updates, rates, strict=True) if u > 0)[-size:]
    for update, rate in kept:
        new_rates[(update - 1) % size] = rate
        new_updates[(update - 1) % size] = update
    return new_rates, new_updates


def read_entries(store: Any) -> FileEntries | None:
    """This state's entries in a file, validated; None for a plain file."""
    keys = set(store.keys())
    if not keys:
        return None  # written by the plain optimizer: derive the rate
    known = set(CORE_KEYS).union(*FEATURE_KEYS.values())
    groups_ok = set(CORE_KEYS) <= keys and all(
        set(group) <= keys or not (set(group) & keys) for group in FEATURE_KEYS.values()
    )
    if not keys <= known or not groups_ok:
        raise ValueError(
            f"Cannot restore the applied learning rate from "
            f"{_keras_private.describe_store(store)}: expected the entries "
            f"{sorted(CORE_KEYS)} (plus, optionally, the groups "
            f"{sorted(FEATURE_KEYS.values())}), found {sorted(keys)}. The file "
            "was not written by this version of introspect_opt; load it with "
            "`skip_mismatch=True` to keep the current optimizer state."
        )
    entries = {key: np.asarray(store[key]) for key in keys}
    history = [entries[k].shape for k in (HISTORY_RATES_KEY, HISTORY_UPDATES_KEY) if k in entries]
    scalars = [entries[k].shape for k in keys if k not in FEATURE_KEYS["history"]]
    if any(shape != () for shape in scalars) or (
        history and (len(history[0]) != 1 or history[0] != history[1])
    ):
        raise ValueError(
            f"Cannot restore the applied learning rate from "
            f"{_keras_private.describe_store(store)}: expected scalars (and two "
            "equal-length vectors for the rate history), found shapes "
            f"{ {k: v.shape for k, v in sorted(entries.items())} }. The file is "
            "damaged or was not written by introspect_opt; load it with "
            "`skip_mismatch=True` to keep the current optimizer state."
        )
    return entries
