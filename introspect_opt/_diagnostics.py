"""Opt-in per-update diagnostics, kept on the device like the applied rate.

With diagnostics on, every applied update also writes three float32 scalars:

* ``gradient_norm``: the global L2 norm of the gradients the update applied
  (after accumulation, unscaling and clipping; under a ``tf.distribute``
  strategy, of the gradients summed over replicas);
* ``update_norm``: the global L2 norm of the change the update made to the
  trainable variables, decoupled weight decay included;
* ``update_to_weight_ratio``: ``update_norm`` divided by the global norm of the
  variables before the update (``inf`` or ``nan`` when those are all zero).

The two norms need the gradients and the weights from before the update. Both
are handed from the Keras hook that sees them to the one that writes within one
update (one trace), through thread-local storage: never an attribute Keras or
TensorFlow would track, and never shared between the threads in which
``MirroredStrategy`` traces its replicas.
"""

from __future__ import annotations

import threading
from typing import Any

import keras
import numpy as np
from keras import ops

from ._state import DIAGNOSTIC_KEYS, AppliedRateState, host_array

_LOCAL = threading.local()


def _handed_over(optimizer: Any) -> dict[str, Any]:
    """This thread's hand-over slot for ``optimizer``."""
    slots: dict[int, dict[str, Any]] = _LOCAL.__dict__.setdefault("slots", {})
    return slots.setdefault(id(optimizer), {})


def stash_gradients(optimizer: Any, grads: list[Any]) -> None:
    """Keeps the gradients of the update being applied (the latest wins)."""
    _handed_over(optimizer)["gradients"] = list(grads)


def snapshot_weights(optimizer: Any, variables: Any, only_if_missing: bool = False) -> None:
    """Copies ``variables`` as they are before the update changes them."""
    slot = _handed_over(optimizer)
    held = slot.get("weights_before")
    if only_if_missing and held is not None and held[0] is variables:
        return
    slot["weights_before"] = (variables, [ops.copy(_values(v)) for v in variables])


def _values(tensor: Any) -> Any:
    if isinstance(tensor, keras.Variable):
        # Inside jax.jit a Keras variable must be read explicitly.
        tensor = tensor.value
    elif type(tensor).__name__ == "IndexedSlices":
        # TensorFlow's sparse gradients (embeddings) hold their rows in
        # `.values`; the norm is that of those rows.
        tensor = tensor.values
    return ops.cast(tensor, "float32")


def _sum_of_squares(tensors: list[Any]) -> Any:
    total = ops.zeros((), "float32")
    for tensor in tensors:
        total = ops.add(total, ops.sum(ops.square(_values(tensor))))
    return total


def write(optimizer: Any, state: AppliedRateState, variables: Any) -> None:
    """Writes the diagnostics of the update that just changed ``variables``."""
    slot = _handed_over(optimizer)
    grads = slot.pop("gradients", None) or []
    held = slot.pop("weights_before", None)
    if held is None or held[0] is not variables:
        raise RuntimeError(  # pragma: no cover - a Keras change would land here
            "introspect_opt diagnostics did not see the weights before this "
            "update; please report this with your Keras version."
        )
    before = held[1]
    gradient_norm = ops.sqrt(_sum_of_squares([g for g in grads if g is not None]))
    change = [ops.subtract(_values(v), _values(b)) for v, b in zip(variables, before, strict=True)]
    update_norm = ops.sqrt(_sum_of_squares(change))
    weight_norm = ops.sqrt(_sum_of_squares(before))
    state.gradient_norm.assign(gradient_norm)
    state.update_norm.assign(update_norm)
    state.update_to_weight_ratio.assign(ops.divide(update_norm, weight_norm))


def read(state: AppliedRateState, fresh: bool) -> dict[str, float]:
    """The last update's diagnostics as floats (NaN where none was recorded).

    ``fresh`` is False when the values do not belong to the update the step
    counter says was last (restored from a file without them).
    """
    if state.gradient_norm is None:
        return {}
    return {
        key: float(host_array(getattr(state, key))) if fresh else np.nan for key in DIAGNOSTIC_KEYS
    }


def record_diagnostics(optimizer: Any) -> Any:
    """Records, on every applied update, its gradient norm and update size.

    Every update then also writes, on the device (no host round-trip):
    ``gradient_norm`` (global L2 norm of the gradients the update applied:
    after accumulation, unscaling and clipping, summed over replicas under a
    ``tf.distribute`` strategy), ``update_norm`` (global L2 norm of the change
    to the trainable variables, decoupled weight decay included) and
    ``update_to_weight_ratio`` (``update_norm`` over the norm of the variables
    before the update). Costs a copy of the weights and a few reductions per
    update (and, under a ``tf.distribute`` strategy, nothing more: the norm is
    taken of the gradients Keras already summed). Weight updates stay bit-identical.
    ``LearningRateLogger(diagnostics=True)`` calls this for you.

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
        >>> {k: round(v, 4) for k, v in introspect_opt.update_diagnostics(opt).items()}
        {'gradient_norm': 1.0, 'update_norm': 0.5, 'update_to_weight_ratio': 0.1}
    """
    from . import _factory

    target = _factory.resolve_optimizer(optimizer, "record_diagnostics()")
    state = target._ensure_introspection_state()
    if state.has_variables:
        state.create_feature(target, "diagnostics")
    else:
        state.requested.diagnostics = 1
    return target


def update_diagnostics(obj: Any) -> dict[str, float]:
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
        >>> introspect_opt.update_diagnostics(introspect_opt.IntrospectableSGD(0.1))
        {}
    """
    from . import _factory

    optimizer = _factory.resolve_optimizer(obj, "update_diagnostics()")
    state = optimizer._ensure_introspection_state()
    if not state.has_variables:
        return {}
    iterations = int(np.asarray(ops.convert_to_numpy(optimizer.iterations)))
    fresh = int(np.asarray(ops.convert_to_numpy(state.update_count))) == iterations
    return read(state, fresh)
