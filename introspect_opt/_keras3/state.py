"""The cached applied rate, and the one extension point opt-in features attach to.

The state is one small object attached to the optimizer (attribute
``_introspection_state``) instead of variables in ``optimizer.variables``.
Plain Keras optimizers refuse a ``.keras`` / ``.weights.h5`` entry whose
variable count differs from theirs, and ``tf.train.Checkpoint`` matches
``optimizer.variables`` by position; keeping the count and the positions
exactly those of the plain optimizer is what makes files interchangeable in
both directions. The state is saved as a group of its own (``.keras`` /
``.weights.h5``) and as a named dependency (``tf.train.Checkpoint``), both of
which a plain optimizer ignores.

Core: two scalar variables, the rate the last update applied and the update
count it belongs to. Everything else (the plateau multiplier, the rate
history, diagnostics) is a :class:`Feature`: a named set of variables of this
state, created on request, saved next to the core entries, and called by the
optimizer at two moments of every update. Features register themselves
(:func:`register_feature`); this module imports none of them.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import keras
import numpy as np

from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3 import dormant as _dormant
from introspect_opt._keras3.persistence.manifest import MANIFEST_KEY

RATE_KEY = "applied_learning_rate"
COUNT_KEY = "update_count"
CORE_KEYS = (RATE_KEY, COUNT_KEY)
# No update has written the cache: ``current_learning_rate`` derives the value.
NO_UPDATE = -1

# This state's entries as read from a file (validated), by name.
Entries = dict[str, np.ndarray]

# The variable types host_array reads with ``numpy()`` (none without TensorFlow).
_TF_VARIABLES: tuple[Any, ...] = ()

if TYPE_CHECKING or keras.backend.backend() != "tensorflow":
    _Trackable = object
else:  # pragma: no branch - the TensorFlow backend is the one CI runs first.
    import tensorflow as tf

    # A tf.Module is tracked by name by tf.train.Checkpoint (including deferred
    # restoration into an optimizer that is built later).
    _Trackable = tf.Module
    # tf.distribute variables (MirroredVariable, ...) are tf.Variable instances.
    _TF_VARIABLES = (tf.Variable,)


@dataclasses.dataclass(frozen=True)
class Update:
    """What an applied update hands to the features (all traced values)."""

    gradients: list[Any]
    variables: list[Any]
    rate: Any  # in the cache's dtype
    count: Any  # the update count it belongs to


class Feature:
    """An opt-in extension of the state: the extension point, documented.

    A feature owns the state attributes named in ``keys`` (variables, also its
    entry names in files and checkpoints). The optimizer calls, for every
    feature whose variables exist:

    * :meth:`before_apply` at the start of ``apply`` (in the traced step,
      before weight decay and the update; also on accumulation micro-steps);
    * :meth:`after_update` right after an update was applied and the cached
      rate written (never on micro-steps or skipped steps).

    Loading calls :meth:`check` on a file's entries before anything is
    assigned and :meth:`assign` after; ``None`` entries mean the file was
    written without the feature (by a plain optimizer, or with it off).

    On TensorFlow a feature that files create may also create its variables
    at build, dormant (:meth:`create_dormant`, see ``_dormant``): a step
    traced before the feature is switched on then still updates it. Its
    :meth:`create` switches them on with :meth:`AppliedRateState.new_variable`,
    and its per-update hooks run for dormant variables too, each gating its
    own work with ``_dormant.when_on``.
    """

    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]]
    # A file or checkpoint holding this feature's entries creates it on load:
    # training state that the rate depends on must not be dropped.
    created_by_files: ClassVar[bool] = False

    def create(self, optimizer: Any, state: AppliedRateState, **options: Any) -> None:
        """Creates the feature's variables (called eagerly, in the strategy's scope)."""
        raise NotImplementedError

    def create_dormant(self, optimizer: Any, state: AppliedRateState) -> None:
        """Creates the feature's variables dormant at build (TensorFlow; default: none)."""

    def options_for(self, entries: Entries) -> dict[str, Any]:
        """The options to create the feature with, to hold a file's entries."""
        return {}

    def adjust_config(self, optimizer: Any, config: dict[str, Any]) -> None:
        """Edits ``optimizer.get_config()``'s result in place (default: nothing)."""

    def wanted_by(self, optimizer: Any) -> dict[str, Any] | None:
        """Options to create the feature with at build, when the optimizer needs it.

        None (the default): only when asked for (:meth:`AppliedRateState.enable`).
        """
        return None

    def options_for_checkpoint(self) -> dict[str, Any] | None:
        """Options to create the feature with for a tf.train.Checkpoint holding it.

        None: the feature cannot be created without seeing the values (it is
        then restored only into an optimizer that already has it).
        """
        return {}

    def before_apply(
        self, optimizer: Any, state: AppliedRateState, gradients: list[Any], variables: list[Any]
    ) -> None:
        """Called at the start of every ``apply`` (traced)."""

    def after_update(self, optimizer: Any, state: AppliedRateState, update: Update) -> None:
        """Called after every applied update (traced)."""

    def check(self, entries: Entries) -> str | None:
        """Why a file's entries of this feature cannot be restored, or None.

        By default every entry is a scalar.
        """
        shapes = {key: entries[key].shape for key in self.keys if entries[key].shape != ()}
        return (
            f"{sorted(shapes)} have shapes {list(shapes.values())}, not scalars" if shapes else None
        )

    def queued(self, optimizer: Any, entries: Entries) -> None:
        """A file with this feature's entries was queued for an unbuilt optimizer.

        For what must show before the build (the rate the next update uses).
        """

    def assign(self, optimizer: Any, state: AppliedRateState, entries: Entries | None) -> None:
        """Restores the feature's variables from a file's entries (None: none)."""
        for key in self.keys:
            variable = getattr(state, key)
            if entries is not None:
                variable.assign(entries[key])


_FEATURES: dict[str, Feature] = {}


def register_feature(feature: Feature) -> Feature:
    """Makes a feature known to every state (once per name)."""
    _FEATURES[feature.name] = feature
    return feature


def features() -> list[Feature]:
    """Every registered feature, in registration order."""
    return list(_FEATURES.values())


def known_keys() -> set[str]:
    return set(CORE_KEYS).union(*(f.keys for f in _FEATURES.values()))


class _Requests:
    """Features asked for before the state's variables exist: name -> options.

    A plain object around the dict: tf.Module would track a dict attribute
    as a checkpoint dependency.
    """

    def __init__(self) -> None:
        self.options: dict[str, dict[str, Any]] = {}


class AppliedRateState(_keras_private.KerasSaveable, _Trackable):
    """Holds the rate the last update applied and the update count it belongs to.

    ``update_count`` equals ``optimizer.iterations`` right after the update that
    wrote ``applied_learning_rate``. Whenever the two disagree (a file or
    checkpoint restored iterations but not the cache, or no update ran yet) the
    cached value is stale and the rate is derived from the schedule instead.
    """

    def __init__(self, owner: Any) -> None:
        if _Trackable is not object:
            super().__init__(name="applied_learning_rate_state")
        self.applied_learning_rate: Any = None
        self.update_count: Any = None
        for feature in features():
            for key in feature.keys:
                setattr(self, key, None)
        self.requested = _Requests()
        # The optimizer this state belongs to (a weak reference: no cycle,
        # and nothing Keras or TensorFlow would try to save).
        self.owner: Callable[[], Any] = weakref.ref(owner)
        # State read from a file before the optimizer was built (see
        # _persistence.Pending); applied by build().
        self.pending: Any = None
        # (weak reference to a Keras weights store, None or the reason it was
        # refused) once the LossScaleOptimizer wrapping the owner checked it:
        # the check runs once per load, and after a refusal the owner's own
        # load from that store refuses too (see _persistence).
        self.wrapper_check: Any = None
        # Serialises creation of variables against reads from other threads
        # (a monitoring thread may read current_learning_rate during build).
        self.__dict__["_lock"] = threading.RLock()
        # Core variables, published together once both exist.
        self.__dict__["_core"] = None
        # Whether a TensorFlow function traced the update step: it keeps the
        # variables it captured (see _dormant).
        self.__dict__["traced"] = False

    def attach_manifest_record(self, record: Any) -> None:
        """Adds the checkpoint child that saves the manifest (TensorFlow; see _checkpoint)."""
        self._manifest = record

    def _trackable_children(self, *args: Any, **kwargs: Any) -> Any:
        # The manifest first: TensorFlow restores children in the order a save
        # listed them, and the manifest must refuse a checkpoint before the
        # cached rate is assigned.
        # A dormant variable (see _dormant) is no state: not saved, and not an
        # object that a restore must match (_lookup_dependency still finds it).
        children = {
            name: child
            for name, child in super()._trackable_children(*args, **kwargs).items()
            if not (_dormant.reshapable(child) and not _dormant.is_on(child))
        }
        record = children.pop("_manifest", None)
        return children if record is None else {"_manifest": record, **children}

    def _obj_type(self) -> str:
        # Only selects the attribute skip-list Keras uses while walking this
        # object; "Optimizer" keeps the walk to our own attributes.
        return "Optimizer"

    def _lookup_dependency(self, name: str, cached_dependencies: Any = None) -> Any:
        # tf.train.Checkpoint asks for each child it holds by name: a feature
        # that files create (training state) is created here, so that a
        # checkpoint holding it restores it instead of dropping it.
        # (Only while restoring: TensorFlow passes the children it listed. A
        # lookup without them comes from tracking an attribute being set.)
        feature = next((f for f in features() if name in f.keys), None)
        if feature is not None and _dormant.reshapable(getattr(self, name, None)):
            return getattr(self, name)  # restored into, it is switched on
        owner = self.owner()
        if (
            cached_dependencies is not None
            and feature is not None
            and feature.created_by_files
            and feature.options_for_checkpoint() is not None
            and owner is not None
            and self.has_variables
            and not self.has(feature.name)
        ):
            self.create(owner, feature.name, **(feature.options_for_checkpoint() or {}))
            cached_dependencies = None  # computed before it existed
        return super()._lookup_dependency(name, cached_dependencies)

    # --- variables ----------------------------------------------------------

    @property
    def has_variables(self) -> bool:
        return self.__dict__["_core"] is not None

    def core(self) -> tuple[Any, Any] | None:
        """(rate variable, count variable), or None before they exist."""
        return self.__dict__["_core"]  # type: ignore[no-any-return]

    def has(self, feature: str) -> bool:
        """Whether an opt-in feature is on: its variables exist, and hold values."""
        variable = getattr(self, _FEATURES[feature].keys[0], None)
        if variable is None:
            return False
        return not _dormant.reshapable(variable) or _dormant.is_on(variable)

    def hooked(self) -> list[Feature]:
        """The features whose variables exist, dormant or on: the step calls their hooks."""
        return [f for f in features() if getattr(self, f.keys[0], None) is not None]

    def active(self) -> list[Feature]:
        return [f for f in features() if self.has(f.name)]

    def is_current(self, optimizer: Any) -> bool:
        """Whether the cache belongs to the last update (read on the host)."""
        core = self.core()
        return core is not None and int(host_array(core[1])) == int(
            host_array(optimizer.iterations)
        )

    def all_variables(self) -> list[Any]:
        """Every variable of this state, in a fixed order (JAX carries these)."""
        if not self.has_variables:
            return []
        names = list(CORE_KEYS)
        for feature in self.active():
            names += feature.keys
        return [getattr(self, name) for name in names]

    def create_variables(self, optimizer: Any, rate_dtype: str) -> None:
        """Creates the two scalar variables, then every requested feature."""
        with self._lock:
            if self.has_variables:
                return
            rate = make_variable(optimizer, RATE_KEY, np.zeros((), dtype=rate_dtype))
            counter = _keras_private.raw_step_counter(optimizer)
            count = make_variable(optimizer, COUNT_KEY, np.full((), NO_UPDATE, counter.dtype))
            self.applied_learning_rate, self.update_count = rate, count
            self.__dict__["_core"] = (rate, count)  # readable from now on, both at once
            if _dormant.SUPPORTED:
                with _keras_private.eager_scope(), _keras_private.strategy_scope(optimizer):
                    for feature in features() if _dormant.usable() else []:
                        feature.create_dormant(optimizer, self)
            for feature in features():
                options = feature.options_for_checkpoint()
                waiting = _keras_private.checkpoint_waits_for(self, feature.keys[0])
                if feature.created_by_files and options is not None and waiting:
                    # A tf.train.Checkpoint restored before the build holds it: it
                    # is restored into the variable as soon as the variable exists.
                    self.requested.options.setdefault(feature.name, options)
            for feature in features():
                wanted = feature.wanted_by(optimizer)
                if wanted is not None:
                    self.requested.options.setdefault(feature.name, wanted)
            requested, self.requested.options = self.requested.options, {}
            for name, options in requested.items():
                self.create(optimizer, name, **options)

    def enable(self, optimizer: Any, name: str, **options: Any) -> bool:
        """Switches a feature on: the one way to do it.

        Its variables are created (or dormant ones switched on) now if the
        state's own exist, else when the optimizer is built. Returns whether
        new variables were created now (a function traced before would not
        update them until retraced).
        """
        with self._lock:
            if self.has(name):
                return False
            if self.has_variables:
                return self.create(optimizer, name, **options)
            self.requested.options[name] = options
            return False

    def create(self, optimizer: Any, name: str, **options: Any) -> bool:
        """Switches an opt-in feature on now (once; eagerly).

        Returns whether that created new variables (False: dormant ones were
        switched on, or the feature was on already).
        """
        feature = _FEATURES[name]
        with self._lock:
            if self.has(name):
                return False
            before = getattr(self, feature.keys[0], None)
            with _keras_private.eager_scope(), _keras_private.strategy_scope(optimizer):
                feature.create(optimizer, self, **options)
            return getattr(self, feature.keys[0], None) is not before

    def new_variable(self, optimizer: Any, key: str, initial: np.ndarray) -> Any:
        """The variable for entry ``key`` holding ``initial``: the dormant one if any.

        Called by :meth:`Feature.create` (eagerly, in the strategy's scope).
        """
        variable: Any = getattr(self, key, None)
        if _dormant.reshapable(variable):
            variable.assign(initial)
            return variable
        return make_variable(optimizer, key, initial)

    def drop(self, name: str) -> None:
        """Switches a feature off (to create it again, e.g. resized).

        Dormant variables are emptied, so that steps traced before still
        update the feature once it is switched on again.
        """
        with self._lock:
            for key in _FEATURES[name].keys:
                variable = getattr(self, key, None)
                if _dormant.reshapable(variable):
                    _dormant.switch_off(variable)
                else:
                    setattr(self, key, None)

    # --- per update -----------------------------------------------------------

    def before_apply(self, optimizer: Any, gradients: list[Any], variables: list[Any]) -> None:
        for feature in self.hooked():
            feature.before_apply(optimizer, self, gradients, variables)

    def record(self, optimizer: Any, update: Update) -> None:
        """Writes the rate an update applied, then lets the features see it."""
        self.applied_learning_rate.assign(update.rate)
        self.update_count.assign(update.count)
        if _dormant.SUPPORTED and _keras_private.is_traced(update.count):
            self.__dict__["traced"] = True
        for feature in self.hooked():
            feature.after_update(optimizer, self, update)

    # --- files ------------------------------------------------------------------

    def entries(self) -> Entries:
        """Every variable's value, by entry name (what a file holds)."""
        if not self.has_variables:
            return {}
        names = list(CORE_KEYS) + [k for f in self.active() for k in f.keys]
        with _keras_private.eager_scope():
            return {name: host_array(getattr(self, name)) for name in names}

    def preview_entries(self, optimizer: Any, entries: Entries | None) -> None:
        """Shows what queued entries change before the build (see ``Feature.queued``)."""
        for feature in features():
            if entries and feature.keys[0] in entries:
                feature.queued(optimizer, entries)

    def assign_entries(self, optimizer: Any, entries: Entries | None) -> None:
        """Restores this state from a file's validated entries (None: a plain file).

        Creates the features a file brings when they are training state
        (``created_by_files``); the rest keep what they are.
        """
        entries = entries or {}
        for feature in features():
            if feature.created_by_files and feature.keys[0] in entries:
                self.create(optimizer, feature.name, **feature.options_for(entries))
        with _keras_private.eager_scope():
            if RATE_KEY in entries:
                self.applied_learning_rate.assign(entries[RATE_KEY])
                self.update_count.assign(entries[COUNT_KEY])
            else:
                self.update_count.assign(NO_UPDATE)
            for feature in self.active():
                own = entries if feature.keys[0] in entries else None
                feature.assign(optimizer, self, own)

    # Keras saving (.keras / .weights.h5): the optimizer reads this state's
    # group itself, together with its own, so that it can check everything
    # before assigning anything (see _persistence); here only the writing.

    def save_own_variables(self, store: Any) -> None:
        entries = self.entries() if self.has_variables else None
        if entries is None and self.pending is not None:
            entries = self.pending.entries
        for key, value in (entries or {}).items():
            store[key] = value
        owner = self.owner()
        manifest = None if owner is None else owner._manifest_to_save()
        if manifest is not None:
            store[MANIFEST_KEY] = manifest.encode()

    def load_own_variables(self, store: Any) -> None:
        pass  # read by the owning optimizer, see _persistence.read_file


def is_number_array(value: np.ndarray) -> bool:
    """Whether an array read from a file holds numbers (bfloat16 and float8 included)."""
    if value.dtype.kind in "iuf":
        return True
    try:  # bfloat16 and float8 arrive as ml_dtypes
        name = str(keras.backend.standardize_dtype(value.dtype))
    except (ValueError, TypeError):
        return False
    return name.startswith(("float", "bfloat", "int", "uint"))


def host_array(value: Any) -> np.ndarray:
    """A tensor's or variable's value on the host, by the backend's shortest path.

    ``keras.ops.convert_to_numpy`` spends a tenth of a millisecond on checks
    per call, several times the read itself, and loggers read several values
    per interval.

    TensorFlow variables are read with ``numpy()``, the one read that works for
    every kind in every context: inside ``strategy.scope()`` (cross-replica
    context) NumPy finds a ``tf.distribute`` variable's ``__array__`` on the
    tensor the strategy reads there, which returns a NumPy scalar for a
    rank-0 variable, and ``np.asarray`` (``keras.ops.convert_to_numpy`` too)
    fails with "object __array__ method not producing an array". ``numpy()``
    reads the local copy (identical on every replica of a mirrored variable;
    no collective, so one worker may read alone).
    """
    if isinstance(value, keras.Variable):
        value = value.value
    if isinstance(value, _TF_VARIABLES):
        return np.asarray(value.numpy())
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError):  # e.g. a distributed variable
        return np.asarray(keras.ops.convert_to_numpy(value))


def host_float(value: Any) -> float:
    return float(host_array(value))


def make_variable(optimizer: Any, name: str, initial: np.ndarray) -> Any:
    """A non-trainable scalar or vector of state, next to the optimizer's own.

    Constant initial values: under ``fit`` the optimizer is built inside the
    traced train function, where initial values that read other variables
    cannot be lifted out (XLA).
    """
    with keras.name_scope(optimizer.name, caller=optimizer):
        return keras.Variable(
            initializer=initial,
            dtype=initial.dtype,
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
            name=name,
        )


def check_entries(store: Any, source: str) -> Entries | None:
    """This state's entries in a file, validated in full; None for a plain file.

    Checks names, groups, shapes and dtypes of every entry (the features'
    own rules included) before the caller assigns anything.
    """
    keys = set(store.keys())
    if not keys:
        return None  # written by the plain optimizer: derive the rate
    groups = [set(CORE_KEYS)] + [set(f.keys) for f in features()]
    complete = set(CORE_KEYS) <= keys and all(g <= keys or not (g & keys) for g in groups)
    if not keys <= known_keys() or not complete:
        optional = sorted(sorted(f.keys) for f in features())
        raise ValueError(
            f"Cannot restore the applied learning rate from {source}: expected the "
            f"entries {sorted(CORE_KEYS)} (plus, optionally, the groups {optional}), "
            f"found {sorted(keys)}. The file was not written by this version of "
            "introspect_opt, or was changed since; nothing was loaded into the "
            "optimizer. Load it with `skip_mismatch=True` to load the model "
            "weights and keep the optimizer's current state."
        )
    entries: Entries = {}
    for key in sorted(keys):
        value = np.asarray(store[key])
        if not is_number_array(value):
            raise ValueError(
                f"Cannot restore the applied learning rate from {source}: entry "
                f"{key!r} holds {value.dtype} data, not numbers. The file is "
                "damaged; nothing was loaded into the optimizer. Load it with "
                "`skip_mismatch=True` to load the model weights and keep the "
                "optimizer's current state."
            )
        entries[key] = value
    problems = [f"{k} has shape {entries[k].shape}" for k in CORE_KEYS if entries[k].shape != ()]
    if entries[COUNT_KEY].dtype.kind not in "iu":
        problems.append(f"{COUNT_KEY} holds {entries[COUNT_KEY].dtype}, not an integer")
    for feature in features():
        if feature.keys[0] in entries:
            problem = feature.check(entries)
            if problem:
                problems.append(problem)
    if problems:
        raise ValueError(
            f"Cannot restore the applied learning rate from {source}: "
            f"{'; '.join(problems)}. The file is damaged or was not written by "
            "introspect_opt; nothing was loaded into the optimizer. Load it with "
            "`skip_mismatch=True` to load the model weights and keep the "
            "optimizer's current state."
        )
    return entries
