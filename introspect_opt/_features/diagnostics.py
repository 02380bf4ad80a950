"""Opt-in feature: per-update diagnostics, kept on the device like the applied rate.

With diagnostics on, every applied update also writes three float32 scalars:

* ``gradient_norm``: the global L2 norm of the gradients the update applied
  (after accumulation, unscaling and clipping; under a ``tf.distribute``
  strategy, of the gradients summed over replicas; for a sparse gradient, with
  the rows that share an index summed, as the update adds them);
* ``update_norm``: the global L2 norm of the change the update made to the
  trainable variables, decoupled weight decay included;
* ``update_to_weight_ratio``: ``update_norm`` divided by the global norm of the
  variables before the update (``inf`` or ``nan`` when those are all zero).

The weights from before the update are copied when ``apply`` starts (before
weight decay) and handed to the write after the update within the same trace,
through thread-local storage: never an attribute Keras or TensorFlow would
track, and never shared between the threads in which ``MirroredStrategy``
traces its replicas.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from introspect_opt._common.names import STATE_ATTRIBUTE
from introspect_opt._keras3.features import Entries, Feature, Update, register_feature
from introspect_opt._keras3.host import host_array
from introspect_opt._keras3.resolve import resolve_optimizer
from introspect_opt._keras3.state import AppliedRateState, make_variable

KEYS = ("gradient_norm", "update_norm", "update_to_weight_ratio")

_LOCAL = threading.local()


def _weights_before(optimizer: Any) -> dict[int, Any]:
    """This thread's copies of ``optimizer``'s weights from the start of ``apply``."""
    slots: dict[int, dict[int, Any]] = _LOCAL.__dict__.setdefault("weights", {})
    return slots.setdefault(id(optimizer), {})


def _values(tensor: Any) -> Any:
    if isinstance(tensor, keras.Variable):
        # Inside jax.jit a Keras variable must be read explicitly.
        tensor = tensor.value
    elif type(tensor).__name__ == "IndexedSlices":
        tensor = _rows_as_applied(tensor)
    return ops.cast(tensor, "float32")


def _rows_as_applied(gradient: Any) -> Any:
    """A sparse gradient's rows with the rows that share an index summed.

    TensorFlow's sparse gradients (embeddings) hold one row per lookup, so an
    id seen twice in a batch has two rows; the update adds both to the same
    row of the variable (``scatter_add``), so the gradient it applied has
    their sum there. The result has as many rows as ``gradient.values`` (the
    extra ones zero): static shapes, so it works under XLA too, and it costs
    one more buffer the size of the rows, never of the variable.
    """
    import tensorflow as tf

    indices = gradient.indices
    order = tf.argsort(indices, stable=True)
    ordered = tf.gather(indices, order)
    starts = tf.concat([[True], tf.not_equal(ordered[1:], ordered[:-1])], axis=0)
    group = tf.cumsum(tf.cast(starts, indices.dtype)) - 1
    segments = tf.scatter_nd(order[:, None], group, tf.shape(indices, out_type=order.dtype))
    return tf.math.unsorted_segment_sum(gradient.values, segments, tf.size(indices))


def _sum_of_squares(tensors: list[Any]) -> Any:
    total = ops.zeros((), "float32")
    for tensor in tensors:
        total = ops.add(total, ops.sum(ops.square(_values(tensor))))
    return total


def _summed_over_replicas(gradients: list[Any]) -> list[Any]:
    """The gradients summed over replicas, under a multi-replica tf.distribute step.

    Keras sums them inside its update step, out of reach; this costs one more
    all-reduce of the gradients per update (only with diagnostics on).
    """
    if keras.backend.backend() != "tensorflow" or not gradients:
        return gradients
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return gradients
    return list(context.all_reduce(tf.distribute.ReduceOp.SUM, gradients))


class _Diagnostics(Feature):
    name = "diagnostics"
    keys = KEYS

    def create(self, optimizer: Any, state: AppliedRateState, **options: Any) -> None:
        for key in reversed(KEYS):  # the feature exists once its first key is set
            setattr(state, key, make_variable(optimizer, key, np.full((), np.nan, "float32")))

    def before_apply(
        self, optimizer: Any, state: AppliedRateState, gradients: list[Any], variables: list[Any]
    ) -> None:
        held = _weights_before(optimizer)
        held.clear()
        for variable in variables:
            held[id(variable)] = ops.copy(_values(variable))

    def after_update(self, optimizer: Any, state: AppliedRateState, update: Update) -> None:
        held = _weights_before(optimizer)
        if any(id(v) not in held for v in update.variables):
            raise RuntimeError(  # pragma: no cover - a Keras change would land here
                "introspect_opt diagnostics did not see the weights before this "
                "update; please report this with your Keras version."
            )
        before = [held[id(v)] for v in update.variables]
        held.clear()
        gradients = _summed_over_replicas([g for g in update.gradients if g is not None])
        gradient_norm = ops.sqrt(_sum_of_squares(gradients))
        change = [
            ops.subtract(_values(v), b) for v, b in zip(update.variables, before, strict=True)
        ]
        update_norm = ops.sqrt(_sum_of_squares(change))
        weight_norm = ops.sqrt(_sum_of_squares(before))
        state.gradient_norm.assign(gradient_norm)
        state.update_norm.assign(update_norm)
        state.update_to_weight_ratio.assign(ops.divide(update_norm, weight_norm))

    def assign(self, optimizer: Any, state: AppliedRateState, entries: Entries | None) -> None:
        for key in KEYS:
            getattr(state, key).assign(np.nan if entries is None else entries[key])


DIAGNOSTICS = register_feature(_Diagnostics())


def read(optimizer: Any) -> dict[str, float]:
    """The last update's diagnostics as floats; NaN where none was recorded.

    NaN too when the values do not belong to the update the step counter says
    was last (restored from a file without them). Empty without diagnostics.
    """
    state = optimizer.__dict__.get(STATE_ATTRIBUTE)
    if state is None or not state.has(DIAGNOSTICS.name):
        return {}
    fresh = state.is_current(optimizer)
    return {key: float(host_array(getattr(state, key))) if fresh else np.nan for key in KEYS}


def record_diagnostics(optimizer: Any) -> Any:
    """Records, on every applied update, its gradient norm and update size.

    Every update then also writes, on the device (no host round-trip):
    ``gradient_norm`` (global L2 norm of the gradients the update applied:
    after accumulation, unscaling and clipping, summed over replicas under a
    ``tf.distribute`` strategy), ``update_norm`` (global L2 norm of the change
    to the trainable variables, decoupled weight decay included) and
    ``update_to_weight_ratio`` (``update_norm`` over the norm of the variables
    before the update). Costs a copy of the weights at every ``apply`` and a
    few reductions per update; under a multi-replica ``tf.distribute``
    strategy, one more all-reduce of the gradients. Weight updates stay
    bit-identical. ``LearningRateLogger(diagnostics=True)`` calls this for you.

    On TensorFlow, a function that traced the update step before (``fit``'s
    train function, say) does not record them until it is traced again: pass
    the compiled model, and its train function is traced again at the next
    ``fit``; given only the optimizer, a warning says so.

    Args:
        optimizer: An introspectable optimizer (or a ``LossScaleOptimizer``
            around one, or a compiled model).

    Returns:
        The introspectable optimizer.

    Raises:
        TypeError: ``optimizer`` is not (and holds no) introspectable optimizer.

    Examples:
        >>> import keras, introspect_opt
        >>> opt = introspect_opt.record_diagnostics(introspect_opt.IntrospectableSGD(0.5))
        >>> w = keras.Variable([3.0, 4.0])
        >>> _ = opt.apply_gradients([(keras.ops.convert_to_tensor([0.6, 0.8]), w)])
        >>> diagnostics = introspect_opt.last_update_diagnostics(opt)
        >>> {k: round(v, 4) for k, v in diagnostics.items()}
        {'gradient_norm': 1.0, 'update_norm': 0.5, 'update_to_weight_ratio': 0.1}
    """
    target = resolve_optimizer(optimizer, "record_diagnostics()")
    state = target._ensure_introspection_state()
    if state.enable(target, DIAGNOSTICS.name) and state.traced:
        if getattr(optimizer, "train_function", None) is not None:  # a compiled model
            optimizer.make_train_function(force=True)
        else:
            warnings.warn(
                f"record_diagnostics(): the update step of '{target.name}' was traced "
                "into a tf.function before (e.g. by fit), which will not record "
                "diagnostics until it is traced again. Pass the compiled model "
                "instead (`record_diagnostics(model)`), or call "
                "`model.make_train_function(force=True)`.",
                stacklevel=2,
            )
    return target


def last_update_diagnostics(obj: Any) -> dict[str, float]:
    """The diagnostics of the last applied update, read in one go.

    Args:
        obj: An introspectable optimizer, a ``LossScaleOptimizer`` around one,
            or a compiled model (on JAX, use the model inside ``fit``).

    Returns:
        ``{"gradient_norm": ..., "update_norm": ..., "update_to_weight_ratio":
        ...}`` as Python floats; ``nan`` where no update has been recorded
        since diagnostics were turned on or state was restored from a file
        without them. Empty when the optimizer does not record diagnostics
        (see ``record_diagnostics``).

    Raises:
        TypeError: ``obj`` is not (and holds no) introspectable optimizer.

    Examples:
        >>> import introspect_opt
        >>> introspect_opt.last_update_diagnostics(introspect_opt.IntrospectableSGD(0.1))
        {}
    """
    return read(resolve_optimizer(obj, "last_update_diagnostics()"))


def update_diagnostics(obj: Any) -> dict[str, float]:
    """Deprecated name of :func:`last_update_diagnostics` (it reads, it does not update).

    Args:
        obj: As for :func:`last_update_diagnostics`.

    Returns:
        As :func:`last_update_diagnostics`.

    Examples:
        >>> import warnings, introspect_opt
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     introspect_opt.update_diagnostics(introspect_opt.IntrospectableSGD(0.1))
        {}
    """
    warnings.warn(
        "introspect_opt.update_diagnostics() is renamed last_update_diagnostics(); "
        "the old name will be removed in 0.3.",
        DeprecationWarning,
        stacklevel=2,
    )
    return last_update_diagnostics(obj)
