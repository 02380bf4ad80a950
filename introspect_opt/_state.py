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
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from . import _keras_private

RATE_KEY = "applied_learning_rate"
COUNT_KEY = "update_count"
# No update has written the cache: ``current_learning_rate`` derives the value.
NO_UPDATE = -1

if TYPE_CHECKING or keras.backend.backend() != "tensorflow":
    _Trackable = object
else:  # pragma: no branch - the TensorFlow backend is the one CI runs first.
    import tensorflow as tf

    # A tf.Module is tracked by name by tf.train.Checkpoint (including deferred
    # restoration into an optimizer that is built later).
    _Trackable = tf.Module


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
    # (rate, update_count) from the file; None: the file lacked them.
    cached: tuple[np.ndarray, np.ndarray] | None = None


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
        self.pending: PendingRestore | None = None
        # Set by the owning optimizer's load_own_variables just before Keras
        # visits this object in the same load: "loaded", "deferred", or None
        # (the optimizer's own state was not restored; leave the cache alone).
        self.owner_load: str | None = None

    def _obj_type(self) -> str:
        # Only selects the attribute skip-list Keras uses while walking this
        # object; "Optimizer" keeps the walk to our own attributes.
        return "Optimizer"

    @property
    def has_variables(self) -> bool:
        return self.applied_learning_rate is not None

    def create_variables(self, optimizer: Any, rate_dtype: str) -> None:
        """Creates the two scalar variables, next to the optimizer's own."""
        counter = _keras_private.raw_step_counter(optimizer)
        with keras.name_scope(optimizer.name, caller=optimizer):
            # Constant initial values: under `fit` the optimizer is built inside
            # the traced train function, where initial values that read other
            # variables cannot be lifted out (XLA).
            self.applied_learning_rate = keras.Variable(
                initializer=np.zeros((), dtype=rate_dtype),
                dtype=rate_dtype,
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
                name=RATE_KEY,
            )
            self.update_count = keras.Variable(
                initializer=np.full((), NO_UPDATE, dtype=counter.dtype),
                dtype=counter.dtype,
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
                name=COUNT_KEY,
            )

    def write(self, rate: Any, count: Any) -> None:
        self.applied_learning_rate.assign(rate)
        self.update_count.assign(count)

    def assign_from_file(self, cached: tuple[np.ndarray, np.ndarray] | None) -> None:
        with _keras_private.eager_scope():
            if cached is None:
                self.update_count.assign(NO_UPDATE)
            else:
                self.applied_learning_rate.assign(cached[0])
                self.update_count.assign(cached[1])

    # --- Keras saving (.keras / .weights.h5) ------------------------------

    def save_own_variables(self, store: Any) -> None:
        if self.has_variables:
            store[RATE_KEY] = np.asarray(keras.ops.convert_to_numpy(self.applied_learning_rate))
            store[COUNT_KEY] = np.asarray(keras.ops.convert_to_numpy(self.update_count))
        elif self.pending is not None and self.pending.cached is not None:
            store[RATE_KEY], store[COUNT_KEY] = self.pending.cached

    def pending_rate(self, update_count: Any) -> np.ndarray | None:
        """The cached rate loaded from a file and not applied yet, if current."""
        cached = None if self.pending is None else self.pending.cached
        if cached is None or int(cached[1]) != int(update_count):
            return None
        return cached[0]

    def load_own_variables(self, store: Any) -> None:
        owner_load, self.owner_load = self.owner_load, None
        if owner_load is None:
            return
        keys = set(store.keys())
        cached: tuple[np.ndarray, np.ndarray] | None
        if not keys:
            # Written by the plain optimizer: derive the rate from iterations.
            cached = None
        elif keys == {RATE_KEY, COUNT_KEY}:
            rate, count = np.asarray(store[RATE_KEY]), np.asarray(store[COUNT_KEY])
            if rate.shape != () or count.shape != ():
                raise ValueError(
                    f"Cannot restore the applied learning rate from "
                    f"{_keras_private.describe_store(store)}: expected two scalars, "
                    f"found shapes {rate.shape} and {count.shape}. The file is "
                    "damaged or was not written by introspect_opt; load it with "
                    "`skip_mismatch=True` to keep the current optimizer state."
                )
            cached = (rate, count)
        else:
            raise ValueError(
                f"Cannot restore the applied learning rate from "
                f"{_keras_private.describe_store(store)}: expected the entries "
                f"{sorted([RATE_KEY, COUNT_KEY])}, found {sorted(keys)}. The file "
                "was not written by this version of introspect_opt; load it with "
                "`skip_mismatch=True` to keep the current optimizer state."
            )
        if owner_load == "deferred" or not self.has_variables:
            if self.pending is None:
                self.pending = PendingRestore(source=_keras_private.describe_store(store))
            self.pending.cached = cached
        else:
            self.assign_from_file(cached)
