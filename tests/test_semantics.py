"""What current_learning_rate holds, for every learning-rate form (docs/semantics.md)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import Witness, bits, make_data, make_model, schedule_value, sync

from introspect_opt import IntrospectableSGD

S = keras.optimizers.schedules


class HalvingEveryThree(S.LearningRateSchedule):
    """A user schedule: 0.2 halved every three raw steps."""

    def __call__(self, step: Any) -> Any:
        step = keras.ops.cast(step, "float32")
        return 0.2 * keras.ops.power(0.5, keras.ops.floor(step / 3.0))

    def get_config(self) -> dict[str, Any]:
        return {}


SCHEDULES = {
    "exponential": S.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.7),
    "exponential_staircase": S.ExponentialDecay(0.1, 2, 0.7, staircase=True),
    "piecewise": S.PiecewiseConstantDecay([2, 4], [0.1, 0.05, 0.01]),
    "polynomial": S.PolynomialDecay(0.1, decay_steps=5, end_learning_rate=0.01, power=2.0),
    "polynomial_cycle": S.PolynomialDecay(0.1, 3, 0.01, power=1.0, cycle=True),
    "inverse_time": S.InverseTimeDecay(0.1, decay_steps=2, decay_rate=0.5),
    "cosine": S.CosineDecay(0.1, decay_steps=6, alpha=0.1),
    "cosine_warmup": S.CosineDecay(0.0, 6, warmup_target=0.1, warmup_steps=3),
    "cosine_restarts": S.CosineDecayRestarts(0.1, first_decay_steps=3),
    "user_subclass": HalvingEveryThree(),
}


def _step(optimizer: Any, w: Any) -> None:
    optimizer.apply_gradients([(keras.ops.ones((2,)), w)])


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_off_by_one_eager(name: str) -> None:
    """After n updates the applied rate is s(n-1) while learning_rate is s(n)."""
    schedule = SCHEDULES[name]
    optimizer = IntrospectableSGD(schedule, momentum=0.5)
    w = keras.Variable([1.0, 2.0])
    assert float(optimizer.current_learning_rate) == schedule_value(schedule, 0)
    for n in range(1, 9):
        _step(optimizer, w)
        assert float(optimizer.current_learning_rate) == schedule_value(schedule, n - 1)
        assert float(optimizer.learning_rate) == schedule_value(schedule, n)


@pytest.mark.tf_only
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_matches_update_step_bits_in_tf_function(name: str, jit_compile: bool) -> None:
    """Inside tf.function the cache holds the very bits update_step received."""
    optimizer = Witness(SCHEDULES[name])
    w = keras.Variable([1.0, 2.0])

    @tf.function(jit_compile=jit_compile)
    def train_step() -> tuple[Any, Any]:
        optimizer.apply_gradients([(tf.ones((2,)), w.value)])
        return optimizer.current_learning_rate, optimizer.witness.value

    optimizer.build([w])
    for _ in range(7):
        read_inside, witnessed = train_step()
        assert bits(read_inside) == bits(witnessed)
        assert bits(optimizer.current_learning_rate) == bits(optimizer.witness)


def test_gradient_accumulation_eager() -> None:
    """Eager accumulation: reads between micro-steps return the cached bits."""
    k = 4
    optimizer = IntrospectableSGD(SCHEDULES["exponential"], gradient_accumulation_steps=k)
    w = keras.Variable([1.0, 2.0])
    assert float(optimizer.current_learning_rate) == schedule_value(SCHEDULES["exponential"], k - 1)
    for raw in range(1, 13):
        optimizer.apply_gradients([(keras.ops.ones((2,)), w)])
        updates = raw // k
        expected_step = updates * k - 1 if updates else k - 1
        assert float(optimizer.current_learning_rate) == schedule_value(
            SCHEDULES["exponential"], expected_step
        )
        assert int(optimizer.iterations) == updates


def test_float_rate_and_setter_show_after_next_update() -> None:
    """Setting learning_rate shows up only once an update applies it."""
    optimizer = IntrospectableSGD(0.05)
    w = keras.Variable([1.0, 2.0])
    assert float(optimizer.current_learning_rate) == np.float32(0.05)
    _step(optimizer, w)
    optimizer.learning_rate = 0.01
    assert float(optimizer.current_learning_rate) == np.float32(0.05)
    assert float(optimizer.learning_rate) == np.float32(0.01)
    _step(optimizer, w)
    assert float(optimizer.current_learning_rate) == np.float32(0.01)


def test_before_first_update_follows_a_rate_set_before_training() -> None:
    """Before any update the value is the rate the first update will use."""
    optimizer = IntrospectableSGD(0.05)
    optimizer.learning_rate = 0.02
    assert float(optimizer.current_learning_rate) == np.float32(0.02)
    optimizer.build([keras.Variable([1.0])])
    optimizer.learning_rate = 0.03
    assert float(optimizer.current_learning_rate) == np.float32(0.03)


def test_zero_argument_callable() -> None:
    """A callable rate is recorded as the value it returned for that update."""
    values = iter([0.3, 0.2, 0.1, 0.05, 0.025, 0.0125])
    current = {"rate": 0.0}

    def rate() -> float:
        return current["rate"]

    optimizer = IntrospectableSGD(rate)
    w = keras.Variable([1.0, 2.0])
    for _ in range(4):
        current["rate"] = next(values)
        expected = np.float32(current["rate"])
        _step(optimizer, w)
        current["rate"] = 99.0  # what the next update would use
        assert float(optimizer.current_learning_rate) == expected
        assert float(optimizer.learning_rate) == 99.0


def test_returns_a_snapshot_not_the_variable() -> None:
    """The value read does not change when later updates run."""
    optimizer = IntrospectableSGD(SCHEDULES["exponential"])
    w = keras.Variable([1.0, 2.0])
    _step(optimizer, w)
    snapshot = optimizer.current_learning_rate
    assert keras.ops.is_tensor(snapshot) and not isinstance(snapshot, keras.Variable)
    assert snapshot.shape == ()
    before = float(snapshot)
    _step(optimizer, w)
    assert float(snapshot) == before
    assert float(optimizer.current_learning_rate) != before


def test_learning_rate_scheduler_callback() -> None:
    """Rates set per epoch by LearningRateScheduler are what each batch applied."""
    model = make_model()
    optimizer = IntrospectableSGD(0.1)
    model.compile(optimizer, loss="mse")
    x, y = make_data(32)
    seen: list[tuple[int, float]] = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(
            (int(sync(model).iterations), float(optimizer.current_learning_rate))
        )
    )
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[scheduler, probe])
    expected = [np.float32(0.1 / (epoch + 1)) for epoch in range(3) for _ in range(4)]
    assert [rate for _, rate in seen] == [float(e) for e in expected]
    assert [it for it, _ in seen] == list(range(1, 13))


def test_reduce_lr_on_plateau() -> None:
    """A reduction by ReduceLROnPlateau appears once the next update uses it."""
    model = make_model()
    optimizer = IntrospectableSGD(0.1)
    model.compile(optimizer, loss="mse")
    x, y = make_data(16)
    seen: list[tuple[float, float]] = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: seen.append(
            (float(sync(model).current_learning_rate), float(optimizer.learning_rate))
        )
    )
    # min_delta=1e9: from the second epoch on every epoch is a plateau, so the
    # callback (which runs before the probe) halves the rate at its end.
    plateau = keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=1e9)
    model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[plateau, probe])
    f32 = [float(np.float32(v)) for v in (0.1, 0.05, 0.025, 0.0125)]
    # (applied during the epoch, what the next update will use)
    assert seen == [(f32[0], f32[0]), (f32[0], f32[1]), (f32[1], f32[2]), (f32[2], f32[3])]


class VectorSchedule(S.LearningRateSchedule):
    """Returns a rate per element: not a scalar."""

    def __call__(self, step: Any) -> Any:
        return keras.ops.ones((2,)) * 0.1

    def get_config(self) -> dict[str, Any]:
        return {}


def test_non_scalar_schedule_is_rejected_at_first_update() -> None:
    """A schedule returning a vector gets an error naming it and what it returned."""
    optimizer = IntrospectableSGD(VectorSchedule())
    w = keras.Variable([1.0, 2.0])
    with pytest.raises(ValueError, match=r"VectorSchedule.*returned.*shape \(2,\).*scalar"):
        _step(optimizer, w)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), [1.0, 2.0])


def test_non_numeric_callable_is_rejected_at_first_update() -> None:
    """A callable returning a string gets an error naming what it returned."""
    optimizer = IntrospectableSGD(lambda: "fast")
    w = keras.Variable([1.0, 2.0])
    with pytest.raises(ValueError, match=r"<lambda>.*returned 'fast' \(type str\).*scalar"):
        _step(optimizer, w)


def test_schedule_switched_to_a_bad_one_after_training_is_rejected() -> None:
    """Replacing the schedule by a broken one fails at the next update, not silently."""
    optimizer = IntrospectableSGD(SCHEDULES["piecewise"])
    w = keras.Variable([1.0, 2.0])
    _step(optimizer, w)
    optimizer.learning_rate = VectorSchedule()
    with pytest.raises(ValueError, match="VectorSchedule"):
        _step(optimizer, w)
    assert float(optimizer.current_learning_rate) == np.float32(0.1)
