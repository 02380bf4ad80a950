"""The cached applied rate of a tf_keras optimizer: two scalar variables.

The state is one small ``tf.Module`` attached to the optimizer (attribute and
checkpoint name ``_introspection_state``), never a member of
``optimizer.variables`` / ``optimizer.weights``: tf_keras saves those by
position (HDF5, ``.keras``, ``set_weights``) and ``tf.train.Checkpoint`` saves
the new optimizer's list by index, so keeping them exactly the plain
optimizer's is what makes files interchangeable in both directions.

* ``applied_learning_rate``: the rate the last applied update used.
* ``update_count``: ``iterations`` right after that update, or ``NO_UPDATE``
  (-1) while no update (and no file) recorded a rate; the rate is then derived.
  It is derived as well while ``iterations`` is below the count (set back, e.g.
  ``optimizer.iterations.assign(0)``, as Keras 3 does when the two differ).
  A counter *above* the count is normal in tf_keras and keeps the cache: its
  ``LossScaleOptimizer`` increments ``iterations`` on the steps it skips.

Both are created with the optimizer's step counter (a new optimizer's at
construction, a legacy one's at its first update, restore or read), in the
scope of the strategy it was created under, so that a ``tf.train.Checkpoint``
restores them at once, also into an optimizer that is not built yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from introspect_opt._common.names import (
    COUNT_KEY,
    MANIFEST_CHILD,
    NO_UPDATE,
    RATE_KEY,
    STATE_MODULE_NAME,
)


class AppliedRateState(tf.Module):
    """The rate the last applied update used, and the update it belongs to."""

    def __init__(self, rate_dtype: Any) -> None:
        super().__init__(name=STATE_MODULE_NAME)
        # Constant initial values, created outside any tf.function: tf_keras
        # may build an optimizer inside a traced train function.
        with tf.init_scope():
            self.applied_learning_rate = tf.Variable(
                tf.zeros((), dtype=rate_dtype), trainable=False, name=RATE_KEY
            )
            self.update_count = tf.Variable(
                tf.constant(NO_UPDATE, dtype=tf.int64), trainable=False, name=COUNT_KEY
            )

    def _trackable_children(self, save_type: Any = "checkpoint", **kwargs: Any) -> Any:
        children = super()._trackable_children(save_type, **kwargs)
        if save_type != "savedmodel":
            return children
        # A SavedModel cannot hold Python state (TensorFlow warns at every save
        # and load that it is not restored): its variables keep the positional
        # checks, as files without a manifest.
        return {name: child for name, child in children.items() if name != MANIFEST_CHILD}

    @property
    def rate_dtype(self) -> Any:
        return self.applied_learning_rate.dtype

    def record(self, rate: Any, iterations: Any) -> list[Any]:
        """Writes the rate an update applied and ``iterations`` after it (on the device)."""
        return [
            self.applied_learning_rate.assign(tf.cast(rate, self.rate_dtype), read_value=False),
            self.update_count.assign(tf.cast(iterations, tf.int64), read_value=False),
        ]

    def forget(self) -> None:
        """Marks the cache stale: the step counter was restored without it."""
        with tf.init_scope():
            self.update_count.assign(NO_UPDATE)

    def read(self, derive: Callable[[], Any], iterations: Any) -> Any:
        """A snapshot of the cached rate, or ``derive()`` while it does not describe an update.

        Args:
            derive: Computes the rate from the step counter.
            iterations: The optimizer's step counter.
        """
        rate, count = self.applied_learning_rate, self.update_count
        recorded = tf.logical_and(
            tf.greater_equal(count, 0), tf.less_equal(count, tf.cast(iterations, tf.int64))
        )

        def cached() -> Any:
            return tf.identity(rate)

        def derived() -> Any:
            return tf.identity(tf.cast(derive(), self.rate_dtype))

        if tf.executing_eagerly():
            return cached() if bool(recorded) else derived()  # only the branch needed
        return tf.cond(recorded, cached, derived)

    def values(self) -> dict[str, np.ndarray]:
        """The state on the host, as saved in files."""
        return {
            RATE_KEY: np.asarray(tf.identity(self.applied_learning_rate).numpy()),
            COUNT_KEY: np.asarray(tf.identity(self.update_count).numpy()),
        }

    def assign_values(self, values: dict[str, np.ndarray] | None) -> None:
        """Restores validated file entries; None (a plain file) marks the cache stale."""
        if values is None:
            self.forget()
            return
        with tf.init_scope():
            self.applied_learning_rate.assign(
                tf.cast(tf.constant(values[RATE_KEY]), self.rate_dtype)
            )
            self.update_count.assign(tf.cast(tf.constant(values[COUNT_KEY]), tf.int64))
