"""The applied rate is right wherever training runs (docs/semantics.md, docs/distributed.md)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import SCHEDULE, Witness, WitnessRecorder, bits, make_data, make_model, schedule_value

from introspect_opt import IntrospectableSGD

# Witness (update_step) and tf.function / tf.distribute throughout; on the other
# backends fit, accumulation, EMA and mixed precision are covered by
# test_numerics.py and test_optimizers.py.
pytestmark = pytest.mark.tf_only


def _assert_rows_follow_schedule(rows: list[tuple[int, float, float]], k: int = 1) -> None:
    assert rows, "the recorder saw no batch"
    for iterations, current, witnessed in rows:
        assert current == witnessed  # the exact bits update_step received
        last_raw_step = iterations * k - 1
        np.testing.assert_allclose(current, schedule_value(SCHEDULE, last_raw_step), rtol=1e-6)


@pytest.mark.parametrize(
    ("jit_compile", "steps_per_execution"),
    [(False, 1), (True, 1), ("auto", 1), (False, 4), (True, 3)],
)
def test_fit(jit_compile: Any, steps_per_execution: int) -> None:
    """model.fit: every batch end sees the rate the last update applied."""
    model = make_model()
    model.compile(
        Witness(SCHEDULE, momentum=0.9),
        loss="mse",
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    x, y = make_data(96)
    recorder = WitnessRecorder()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[recorder])
    assert recorder.rows[-1][0] == 24
    _assert_rows_follow_schedule(recorder.rows)
    assert float(model.optimizer.learning_rate) == pytest.approx(
        float(schedule_value(SCHEDULE, 24)), rel=1e-6
    )


def test_train_on_batch() -> None:
    """train_on_batch updates the cache exactly like fit."""
    model = make_model()
    model.compile(Witness(SCHEDULE), loss="mse")
    x, y = make_data(8)
    for n in range(1, 5):
        model.train_on_batch(x, y)
        assert int(model.optimizer.iterations) == n
        assert bits(model.optimizer.current_learning_rate) == bits(model.optimizer.witness)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_gradient_accumulation_fit(jit_compile: bool) -> None:
    """Micro-steps leave the value alone; real updates used s(k-1), s(2k-1), ..."""
    k = 3
    model = make_model()
    model.compile(
        Witness(SCHEDULE, gradient_accumulation_steps=k), loss="mse", jit_compile=jit_compile
    )
    x, y = make_data(72)
    recorder = WitnessRecorder()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[recorder])
    iterations = [row[0] for row in recorder.rows]
    assert iterations == [b // k for b in range(1, 10)]
    rates = [row[1] for row in recorder.rows]
    first = float(schedule_value(SCHEDULE, k - 1))  # before any update: the first's rate
    assert rates[:2] == [pytest.approx(first, rel=1e-6)] * 2
    assert rates[2] == rates[3] == rates[4]  # unchanged across micro-steps
    _assert_rows_follow_schedule([r for r in recorder.rows if r[0] > 0], k=k)


def test_ema() -> None:
    """EMA (with periodic overwrite) does not disturb the recorded rate."""
    model = make_model()
    model.compile(
        Witness(SCHEDULE, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3),
        loss="mse",
        jit_compile=True,
    )
    x, y = make_data(64)
    recorder = WitnessRecorder()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[recorder])
    _assert_rows_follow_schedule(recorder.rows)


def test_mixed_float16_fit_wraps_and_records() -> None:
    """Under mixed_float16 compile wraps ours in a LossScaleOptimizer; the inner one records."""
    keras.config.set_dtype_policy("mixed_float16")
    model = make_model()
    model.compile(Witness(SCHEDULE), loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, IntrospectableSGD)
    x, y = make_data(64)
    recorder = WitnessRecorder()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[recorder])
    _assert_rows_follow_schedule(recorder.rows)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_loss_scale_skipped_steps_leave_the_rate_unchanged(jit_compile: bool) -> None:
    """Steps a LossScaleOptimizer skips for non-finite gradients change nothing."""
    keras.config.set_dtype_policy("mixed_float16")
    model = make_model()
    # A huge initial scale overflows float16 gradients: the first steps are skipped
    # while the scale halves, then updates resume.
    optimizer = keras.optimizers.LossScaleOptimizer(Witness(SCHEDULE), initial_scale=2.0**30)
    model.compile(optimizer, loss="mse", jit_compile=jit_compile)
    x, y = make_data(512)
    recorder = WitnessRecorder()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[recorder])
    iterations = [row[0] for row in recorder.rows]
    skipped = sum(1 for a, b in zip([0, *iterations[:-1]], iterations, strict=True) if a == b)
    assert skipped >= 5 and iterations[-1] > 5  # both kinds of step happened
    first = float(schedule_value(SCHEDULE, 0))
    for it, current, _ in recorder.rows:
        if it == 0:
            assert current == pytest.approx(first, rel=1e-6)
    _assert_rows_follow_schedule([r for r in recorder.rows if r[0] > 0])


def test_custom_loop_loss_scale_non_finite_gradients() -> None:
    """LossScaleOptimizer.apply_gradients with inf gradients skips: value unchanged."""
    inner = IntrospectableSGD(SCHEDULE)
    optimizer = keras.optimizers.LossScaleOptimizer(inner)
    w = keras.Variable([1.0, 2.0])
    optimizer.apply_gradients([(tf.ones((2,)), w)])
    applied = float(inner.current_learning_rate)
    optimizer.apply_gradients([(tf.constant([np.inf, 1.0]), w)])
    assert int(inner.iterations) == 1
    assert float(inner.current_learning_rate) == applied
    optimizer.apply_gradients([(tf.ones((2,)), w)])
    assert float(inner.current_learning_rate) == schedule_value(SCHEDULE, 1)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_custom_loop_reads_inside_tf_function(jit_compile: bool) -> None:
    """Read inside the step, the value is ordered after that step's update."""
    model = make_model()
    optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
    x, y = make_data(32)

    @tf.function(jit_compile=jit_compile)
    def step(xb: Any, yb: Any) -> tuple[Any, Any, Any]:
        before = optimizer.current_learning_rate
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xb) - yb) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return before, optimizer.current_learning_rate, optimizer.iterations

    optimizer.build(model.trainable_variables)
    traces_before = None
    for n in range(1, 6):
        before, after, iterations = step(x, y)
        assert int(iterations) == n
        assert float(after) == pytest.approx(float(schedule_value(SCHEDULE, n - 1)), rel=1e-6)
        if n > 1:
            assert float(before) == pytest.approx(float(schedule_value(SCHEDULE, n - 2)), rel=1e-6)
        traces = step.experimental_get_tracing_count()
        if traces_before is not None:
            assert traces == traces_before  # no retracing per step
        traces_before = traces


def test_one_device_strategy_fit() -> None:
    """OneDeviceStrategy: same values as without a strategy."""
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = make_model()
        model.compile(Witness(SCHEDULE), loss="mse")
    x, y = make_data(48)
    recorder = WitnessRecorder()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[recorder])
    _assert_rows_follow_schedule(recorder.rows)


def _mirrored() -> Any:
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.mark.parametrize("jit_compile", [False, "auto"])
def test_mirrored_strategy_fit(jit_compile: Any) -> None:
    """MirroredStrategy over two logical CPUs: fit records the applied rate once."""
    strategy = _mirrored()
    with strategy.scope():
        model = make_model()
        model.compile(
            IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse", jit_compile=jit_compile
        )
    x, y = make_data(64)
    seen: list[tuple[int, float]] = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(
            (int(model.optimizer.iterations.numpy()), float(model.optimizer.current_learning_rate))
        )
    )
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[probe])
    assert [it for it, _ in seen] == list(range(1, 9))
    for it, rate in seen:
        assert rate == pytest.approx(float(schedule_value(SCHEDULE, it - 1)), rel=1e-6)


def test_mirrored_strategy_custom_loop_replica_and_cross_replica_agree() -> None:
    """Read in replica context and in cross-replica context: one value, every step."""
    strategy = _mirrored()
    with strategy.scope():
        model = make_model()
        optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
        optimizer.build(model.trainable_variables)
    x, y = make_data(64)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    )

    def replica_step(xb: Any, yb: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xb) - yb) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return optimizer.current_learning_rate

    @tf.function
    def step(batch: Any) -> tuple[Any, Any]:
        per_replica = strategy.run(replica_step, args=batch)
        return strategy.experimental_local_results(per_replica), optimizer.current_learning_rate

    iterator = iter(dataset)
    for n in range(1, 6):
        in_replicas, cross = step(next(iterator))
        assert len(in_replicas) == 2
        values = {float(v) for v in in_replicas} | {float(cross)}
        assert len(values) == 1
        assert values.pop() == pytest.approx(float(schedule_value(SCHEDULE, n - 1)), rel=1e-6)
        assert float(optimizer.current_learning_rate) == float(cross)
        assert int(optimizer.iterations.numpy()) == n
