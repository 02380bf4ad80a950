"""What ``current_learning_rate`` means on tf_keras optimizers, new and legacy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tfk_helpers import (
    FLOAT_ONLY,
    SCHEDULE,
    bits,
    exported_optimizers,
    mirrored_strategy,
    rate_for,
    update_count,
)

from introspect_opt import tf_keras as itk

FAMILIES = {"new": itk.IntrospectableSGD, "legacy": itk.IntrospectableLegacySGD}
# Warm-up then cosine: float arithmetic a compiler may reorder, so a value
# recomputed elsewhere could differ in the last bit; the cached one cannot.
COSINE = tf_keras.optimizers.schedules.CosineDecay(0.0, 20, warmup_target=0.3, warmup_steps=3)


def s(step: int, schedule: Any = SCHEDULE) -> float:
    return float(schedule(step))


def apply(optimizer: Any, variable: Any, n: int = 1, gradient: float = 1.0) -> None:
    for _ in range(n):
        optimizer.apply_gradients([(tf.fill(variable.shape, gradient), variable)])


@pytest.mark.parametrize("family", FAMILIES)
def test_after_n_updates_it_is_the_rate_of_update_n(family: str) -> None:
    """After n updates the rate is s(n-1), where tf_keras's legacy rate already shows s(n)."""
    optimizer = FAMILIES[family](SCHEDULE, momentum=0.9)
    w = tf.Variable([1.0, 2.0])
    for n in range(1, 5):
        apply(optimizer, w)
        assert bits(optimizer.current_learning_rate) == bits(s(n - 1))
        if family == "legacy":
            assert bits(optimizer._decayed_lr(tf.float32)) == bits(s(n))  # the next update's
            assert optimizer.lr is SCHEDULE  # `lr` / `learning_rate` is the schedule itself
        else:
            # tf_keras's new optimizer keeps the last rate in a private variable.
            assert bits(optimizer.learning_rate) == bits(s(n - 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_before_any_update_it_is_the_first_updates_rate(family: str) -> None:
    """A fresh optimizer reports the rate its first update will apply, for schedules and floats."""
    assert bits(FAMILIES[family](SCHEDULE).current_learning_rate) == bits(s(0))
    assert bits(FAMILIES[family](0.25).current_learning_rate) == bits(0.25)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_rate_set_by_a_callback_shows_once_an_update_applied_it(family: str) -> None:
    """A float rate set now shows in `learning_rate` at once and as applied after an update."""
    optimizer = FAMILIES[family](0.1)
    w = tf.Variable([1.0])
    apply(optimizer, w)
    optimizer.learning_rate = 0.01
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    assert bits(optimizer.current_learning_rate) == bits(0.1)
    before = w.numpy().copy()
    apply(optimizer, w)
    assert bits(optimizer.current_learning_rate) == bits(0.01)
    # The update really used 0.01 (SGD without momentum: w -= rate * gradient).
    assert bits(w.numpy()[0]) == bits(np.float32(before[0]) - np.float32(0.01))


@pytest.mark.parametrize("family", FAMILIES)
def test_steps_a_loss_scale_optimizer_skips_leave_it_unchanged(family: str) -> None:
    """A non-finite gradient skips the update (tf_keras still counts the step): the rate stays."""
    optimizer = tf_keras.mixed_precision.LossScaleOptimizer(FAMILIES[family](SCHEDULE))
    inner = optimizer.inner_optimizer
    w = tf.Variable([1.0])
    optimizer.apply_gradients([(tf.constant([1.0]), w)])
    optimizer.apply_gradients([(tf.constant([np.inf]), w)])
    assert int(inner.iterations) == 2  # tf_keras increments on a skipped step too
    assert bits(inner.current_learning_rate) == bits(s(0))
    assert update_count(inner) == 1
    assert bits(itk.current_learning_rate(optimizer)) == bits(s(0))
    optimizer.apply_gradients([(tf.constant([1.0]), w)])
    assert bits(inner.current_learning_rate) == bits(s(2))  # the schedule moved on


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_cache_holds_bit_for_bit_what_the_update_read(family: str, jit: bool) -> None:
    """Inside one compiled step, the cached rate equals the rate tensor the variable update used."""
    seen = tf.Variable(0.0)
    if family == "new":

        class Witness(itk.IntrospectableSGD):
            def update_step(self, gradient: Any, variable: Any) -> Any:
                seen.assign(tf.cast(self.learning_rate, variable.dtype))
                return super().update_step(gradient, variable)

    else:

        class Witness(itk.IntrospectableLegacySGD):  # type: ignore[no-redef]
            def _resource_apply_dense(self, grad: Any, var: Any, apply_state: Any = None) -> Any:
                seen.assign(apply_state[(var.device, var.dtype.base_dtype)]["lr_t"])
                return super()._resource_apply_dense(grad, var, apply_state)

    optimizer = Witness(COSINE, momentum=0.9)
    w = tf.Variable([1.0, -1.0])

    @tf.function(jit_compile=jit)
    def step() -> tuple[Any, Any]:
        optimizer.apply_gradients([(tf.ones(2), w)])
        return optimizer.current_learning_rate, tf.identity(seen)

    for n in range(1, 8):
        applied, used = step()
        assert bits(applied) == bits(used), n
        assert float(applied) == pytest.approx(s(n - 1, COSINE), rel=1e-6)
        assert bits(optimizer.current_learning_rate) == bits(used)  # and eagerly afterwards


def test_reading_returns_a_snapshot_not_the_variable() -> None:
    """The value read keeps its value when later updates change the cache."""
    optimizer = itk.IntrospectableSGD(SCHEDULE)
    w = tf.Variable([1.0])
    apply(optimizer, w)
    first = optimizer.current_learning_rate
    assert not isinstance(first, tf.Variable)
    assert first.shape == () and first.dtype == tf.float32
    apply(optimizer, w)
    assert bits(first) == bits(s(0)) and bits(optimizer.current_learning_rate) == bits(s(1))


@pytest.mark.parametrize("family", FAMILIES)
def test_mirrored_strategy_replica_and_cross_replica_reads(family: str, devices: list[str]) -> None:
    """Under MirroredStrategy every replica, the cross-replica context and eager reads agree."""
    strategy = mirrored_strategy(devices[:2])
    with strategy.scope():
        optimizer = FAMILIES[family](SCHEDULE, momentum=0.9)
        w = tf.Variable([1.0, 2.0])
    assert bits(optimizer.current_learning_rate) == bits(s(0))  # eager, cross-replica

    def replica_step() -> Any:
        optimizer.apply_gradients([(tf.ones(2), w)])
        return optimizer.current_learning_rate

    @tf.function
    def step() -> tuple[Any, Any]:
        per_replica = strategy.run(replica_step)
        return strategy.experimental_local_results(per_replica), optimizer.current_learning_rate

    for n in range(1, 4):
        per_replica, cross = step()
        assert [bits(v) for v in per_replica] == [bits(s(n - 1))] * 2
        assert bits(cross) == bits(s(n - 1))
        assert bits(optimizer.current_learning_rate) == bits(s(n - 1))
        assert int(optimizer.iterations.numpy()) == n  # one update per step, not one per replica


# --- the step counter set by hand ------------------------------------------------

EXPORTED = exported_optimizers()


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_a_counter_set_back_derives_the_rate_as_in_keras_3(name: str) -> None:
    """`iterations.assign(0)` reads as "before any update"; the next update is cached again."""
    optimizer = getattr(itk, name)(rate_for(name))
    expected = [bits(rate_for(name) if name in FLOAT_ONLY else s(n)) for n in range(4)]
    w = tf.Variable([1.0, 2.0])
    read_in_graph = tf.function(lambda: optimizer.current_learning_rate)
    apply(optimizer, w, 3)
    assert bits(optimizer.current_learning_rate) == expected[2]
    optimizer.iterations.assign(1)  # below the last update's count (3): derived
    assert bits(optimizer.current_learning_rate) == expected[0]
    optimizer.iterations.assign(0)
    assert bits(optimizer.current_learning_rate) == expected[0]
    assert bits(read_in_graph()) == expected[0]
    apply(optimizer, w)  # runs at counter 0 again
    assert bits(optimizer.current_learning_rate) == expected[0]
    assert update_count(optimizer) == 1
    apply(optimizer, w)
    assert bits(optimizer.current_learning_rate) == bits(read_in_graph()) == expected[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_counter_set_ahead_keeps_the_rate_the_last_update_applied(family: str) -> None:
    """tf_keras moves `iterations` without an update (skipped steps): the cache stays."""
    optimizer = FAMILIES[family](SCHEDULE)
    w = tf.Variable([1.0])
    apply(optimizer, w, 2)
    optimizer.iterations.assign(10)
    assert bits(optimizer.current_learning_rate) == bits(s(1))
    apply(optimizer, w)
    assert bits(optimizer.current_learning_rate) == bits(s(10))
