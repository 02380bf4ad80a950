"""What differs between Keras backends, tested on whichever one this run uses."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
from conftest import BACKEND
from helpers import SCHEDULE, make_data, make_model, schedule_value

import introspect_opt


def test_cache_is_listed_in_variables_only_on_jax() -> None:
    """JAX carries only optimizer.variables through a step; elsewhere the list stays plain's."""
    optimizer = introspect_opt.IntrospectableAdam(SCHEDULE)
    plain = keras.optimizers.Adam(SCHEDULE)
    model = make_model()
    optimizer.build(model.trainable_variables)
    plain.build(model.trainable_variables)
    extra = 2 if BACKEND == "jax" else 0
    assert len(optimizer.variables) == len(plain.variables) + extra


def test_helper_reads_the_rate_in_a_fit_callback() -> None:
    """current_learning_rate(model) works in callbacks on every backend (JAX: it syncs)."""
    model = make_model()
    model.compile(introspect_opt.IntrospectableRMSprop(SCHEDULE), loss="mse")
    x, y = make_data(48)
    seen: list[tuple[float, int]] = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(
            (
                float(introspect_opt.current_learning_rate(model)),
                int(model.optimizer.iterations),
            )
        )
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[probe])
    assert [it for _, it in seen] == list(range(1, 7))
    for rate, it in seen:
        np.testing.assert_allclose(rate, schedule_value(SCHEDULE, it - 1), rtol=1e-6)


@pytest.mark.skipif(BACKEND != "jax", reason="stateless_apply is a JAX workflow")
def test_stateless_apply_recipe_on_jax() -> None:
    """From the optimizer variables stateless_apply returns, read the applied rate."""
    import jax

    model = make_model()
    optimizer = introspect_opt.IntrospectableAdam(SCHEDULE, gradient_accumulation_steps=2)
    optimizer.build(model.trainable_variables)
    trainable = [v.value for v in model.trainable_variables]
    state = [v.value for v in optimizer.variables]

    @jax.jit
    def step(trainable: Any, state: Any) -> Any:
        grads = [jax.numpy.ones_like(t) for t in trainable]
        return optimizer.stateless_apply(state, grads, trainable)

    for raw in range(1, 7):
        trainable, state = step(trainable, state)
        rate = introspect_opt.current_learning_rate(optimizer, state)
        updates = raw // 2
        expected = schedule_value(SCHEDULE, 2 * updates - 1 if updates else 1)
        np.testing.assert_allclose(float(rate), expected, rtol=1e-6)
    # The optimizer's own variables were not touched.
    assert int(optimizer.iterations) == 0
    with pytest.raises(ValueError, match="received 1 optimizer_variables"):
        introspect_opt.current_learning_rate(optimizer, state[:1])
