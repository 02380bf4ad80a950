"""Opt-in: a multiplier on the learning rate, for plateau reduction on schedules.

Keras's ``ReduceLROnPlateau`` assigns a new float rate, which is impossible
(a ``TypeError``) when the rate is a schedule. With the multiplier on (as
``ScaleLearningRateOnPlateau`` turns it on), the optimizer multiplies whatever
its rate is (schedule, float or callable) by a scalar variable in its own
state, so the whole schedule can be scaled down. The multiplier is saved and
restored with the optimizer and is part of ``current_learning_rate``. It is
off unless asked for: even a multiply by 1.0 can change how XLA compiles the
step, and weights must stay bit-identical to the plain optimizer's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from . import _keras_private


def enable_multiplier(optimizer: Any) -> bool:
    """Gives the optimizer a multiplier (1.0) if it has none; True if created."""
    state = optimizer._ensure_introspection_state()
    if state.learning_rate_multiplier is not None or state.requested.multiplier:
        return False
    if state.has_variables:
        state.create_feature(optimizer, "multiplier")
    else:
        state.requested.multiplier = 1
    return True


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
        raise RuntimeError(  # pragma: no cover - callers enable it first
            "set_multiplier() before enable_multiplier() and build"
        )
    with _keras_private.eager_scope():
        state.learning_rate_multiplier.assign(value)
