"""A multiplier on the learning rate, for plateau reduction on schedules.

Keras's ``ReduceLROnPlateau`` assigns a new float rate, which is impossible
(a ``TypeError``) when the rate is a schedule. Every introspectable optimizer
multiplies whatever its rate is (schedule, float or callable) by a scalar
variable in its own state, 1.0 unless a callback scales it, so the whole
schedule can be scaled down. The multiplier is saved and restored with the
optimizer and is part of ``current_learning_rate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from . import _keras_private


def schedule_multiplier(optimizer: Any) -> float:
    """The current multiplier (1.0 when the optimizer has none)."""
    state = optimizer.__dict__.get("_introspection_state")
    if state is None or state.learning_rate_multiplier is None:
        return 1.0
    return float(np.asarray(ops.convert_to_numpy(state.learning_rate_multiplier)))


def set_multiplier(optimizer: Any, value: float) -> None:
    """Sets the multiplier; the next update applies it."""
    state = optimizer._ensure_introspection_state()
    if state.learning_rate_multiplier is None:
        optimizer.build(optimizer._trainable_variables)  # pragma: no cover
    with _keras_private.eager_scope():
        state.learning_rate_multiplier.assign(value)
