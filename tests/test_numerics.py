"""Variable updates are bit-identical to plain keras.optimizers.SGD (docs/semantics.md)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
from helpers import JIT_MODES, SCHEDULE, make_data, make_model, optimizer_state

from introspect_opt import IntrospectableSGD

# Whole matrices and many fits: `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

CONFIGS = {
    "momentum_nesterov_decay_clipnorm": dict(
        momentum=0.9, nesterov=True, weight_decay=1e-3, clipnorm=0.5
    ),
    "momentum_global_clipnorm": dict(momentum=0.8, global_clipnorm=1.0),
    "clipvalue_decay": dict(clipvalue=0.1, weight_decay=5e-4),
    "accumulation_ema": dict(
        momentum=0.9, gradient_accumulation_steps=3, use_ema=True, ema_overwrite_frequency=5
    ),
}


def _fit(optimizer: Any, jit_compile: Any) -> Any:
    model = make_model(seed=11, hidden=32)
    model.compile(optimizer, loss="mse", jit_compile=jit_compile)
    x, y = make_data(160, seed=12)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=True)
    return model


@pytest.mark.parametrize("jit_compile", JIT_MODES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_multi_epoch_fit_is_bit_identical_to_sgd(name: str, jit_compile: bool) -> None:
    """Weights and every optimizer slot equal plain SGD's exactly after 3 epochs."""
    kwargs: dict[str, Any] = CONFIGS[name]
    plain = _fit(keras.optimizers.SGD(SCHEDULE, **kwargs), jit_compile)
    ours = _fit(IntrospectableSGD(SCHEDULE, **kwargs), jit_compile)
    for a, b in zip(plain.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(optimizer_state(plain.optimizer), optimizer_state(ours.optimizer), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(ours.optimizer.iterations) > 0


def test_mixed_precision_is_bit_identical_to_sgd() -> None:
    """Under mixed_float16 (LossScaleOptimizer) the updates match as well."""
    keras.config.set_dtype_policy("mixed_float16")
    plain = _fit(keras.optimizers.SGD(SCHEDULE, momentum=0.9), "auto")
    ours = _fit(IntrospectableSGD(SCHEDULE, momentum=0.9), "auto")
    assert isinstance(ours.optimizer, keras.optimizers.LossScaleOptimizer)
    for a, b in zip(plain.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
