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
are handed from the Keras hook that sees them to the one that writes through
``optimizer.__dict__``, never through an attribute Keras or TensorFlow would
track, and only within one update (one trace).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from ._state import DIAGNOSTIC_KEYS, AppliedRateState

_GRADIENTS = "_introspect_diagnostic_gradients"
_WEIGHTS_BEFORE = "_introspect_diagnostic_weights_before"


def stash_gradients(optimizer: Any, grads: list[Any]) -> None:
    """Keeps the gradients of the update being applied (the latest wins)."""
    optimizer.__dict__[_GRADIENTS] = list(grads)


def snapshot_weights(optimizer: Any, variables: Any, only_if_missing: bool = False) -> None:
    """Copies ``variables`` as they are before the update changes them."""
    held = optimizer.__dict__.get(_WEIGHTS_BEFORE)
    if only_if_missing and held is not None and held[0] is variables:
        return
    optimizer.__dict__[_WEIGHTS_BEFORE] = (variables, [ops.copy(_values(v)) for v in variables])


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
    grads = optimizer.__dict__.pop(_GRADIENTS, None) or []
    held = optimizer.__dict__.pop(_WEIGHTS_BEFORE, None)
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
        key: float(np.asarray(ops.convert_to_numpy(getattr(state, key)))) if fresh else np.nan
        for key in DIAGNOSTIC_KEYS
    }
