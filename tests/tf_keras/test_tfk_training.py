"""tf_keras `fit`: jit, steps_per_execution, callbacks, mixed precision, strategies, resumption."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tfk_helpers import (
    SCHEDULE,
    RateLog,
    array_bits,
    bits,
    make_data,
    make_model,
    mirrored_strategy,
)

from introspect_opt import tf_keras as itk

FAMILIES = {"new": itk.IntrospectableSGD, "legacy": itk.IntrospectableLegacySGD}
BATCH = 8  # 32 samples: 4 updates per epoch


@pytest.mark.parametrize(
    ("family", "jit", "steps_per_execution"),
    [("new", False, 1), ("new", True, 2), ("legacy", False, 2), ("legacy", True, 1)],
)
def test_fit_callbacks_see_each_updates_rate(
    family: str, jit: bool, steps_per_execution: int
) -> None:
    """In `fit` (XLA or not, several steps per execution) callbacks read the rate just applied."""
    x, y = make_data()
    model = make_model()
    model.compile(
        FAMILIES[family](SCHEDULE, momentum=0.9),
        loss="mse",
        jit_compile=jit,
        steps_per_execution=steps_per_execution,
    )
    log = RateLog()
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[log])
    # Callbacks run once per execution, after its last update.
    iterations = [row["iterations"] for row in log.rows]
    assert iterations == list(range(steps_per_execution, 9, steps_per_execution))
    assert [bits(r) for r in log.applied] == [bits(SCHEDULE(n - 1)) for n in iterations]


@pytest.mark.parametrize("family", FAMILIES)
def test_learning_rate_scheduler_and_reduce_on_plateau(family: str) -> None:
    """Rates set by tf_keras's own callbacks show in the applied rate from the next update on."""
    x, y = make_data()
    model = make_model()
    model.compile(FAMILIES[family](0.1), loss="mse")
    log = RateLog()
    halve = tf_keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr if epoch == 0 else lr / 2)
    history = model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[halve, log])
    expected = [0.1] * 4 + [0.05] * 4 + [0.025] * 4
    assert [bits(r) for r in log.applied] == [bits(e) for e in expected]
    # tf_keras logs `lr` at the end of each epoch: the rate set for that epoch.
    assert [bits(r) for r in history.history["lr"]] == [bits(0.1), bits(0.05), bits(0.025)]

    model = make_model()
    model.compile(FAMILIES[family](0.1), loss="mse")
    log = RateLog()
    # Never "improves" after the first epoch: reduced at the end of epoch 2.
    plateau = tf_keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=1e9)
    history = model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[plateau, log])
    assert [bits(r) for r in log.applied] == [bits(0.1)] * 8 + [bits(0.05)] * 4
    # It logs `lr` before reducing it: the rate that epoch applied.
    assert [bits(r) for r in history.history["lr"]] == [bits(0.1), bits(0.1), bits(0.05)]


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_float16_fit_looks_through_the_loss_scale_optimizer(family: str) -> None:
    """Under mixed_float16 compile wraps ours in a LossScaleOptimizer; the rate reads through it."""
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    x, y = make_data()
    model = make_model()
    model.compile(FAMILIES[family](SCHEDULE), loss="mse")
    assert isinstance(model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    log = RateLog()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[log])
    assert [bits(r) for r in log.applied] == [bits(SCHEDULE(n)) for n in range(4)]
    assert isinstance(model.optimizer.inner_optimizer, FAMILIES[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_mirrored_strategy_fit_is_bit_identical_to_the_plain_class(
    family: str, devices: list[str]
) -> None:
    """`fit` under MirroredStrategy over 2 logical devices: plain weights, per-step rates."""
    x, y = make_data()
    plain_cls = {"new": tf_keras.optimizers.SGD, "legacy": tf_keras.optimizers.legacy.SGD}[family]
    results = []
    for cls in (FAMILIES[family], plain_cls):
        strategy = mirrored_strategy(devices[:2])
        with strategy.scope():
            model = make_model()
            model.compile(cls(SCHEDULE, momentum=0.9), loss="mse")
        callbacks = [RateLog()] if cls is FAMILIES[family] else []
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
        results.append(model.get_weights())
        if callbacks:
            assert [bits(r) for r in callbacks[0].applied] == [bits(SCHEDULE(n)) for n in range(4)]
            assert bits(model.optimizer.current_learning_rate) == bits(SCHEDULE(3))
    assert array_bits(results[0]) == array_bits(results[1])


def test_mirrored_strategy_with_xla_fails_upstream_for_the_plain_class_too(
    devices: list[str],
) -> None:
    """tf_keras fit(jit_compile=True) under MirroredStrategy on CPU devices fails for plain SGD."""
    x, y = make_data()
    with mirrored_strategy(devices[:2]).scope():
        model = make_model()
        model.compile(tf_keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Trying to access resource"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


class Interrupt(tf_keras.callbacks.Callback):
    """Raises after a given number of updates (after the callbacks before it ran)."""

    def __init__(self, after_updates: int) -> None:
        super().__init__()
        self.after_updates = after_updates

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if int(self.model.optimizer.iterations.numpy()) == self.after_updates:
            raise RuntimeError("interrupted")


def _fit_three_epochs(
    family: str, x: Any, y: Any, callbacks: list[Any]
) -> tuple[list[Any], list[dict[str, float]]]:
    model = make_model()
    model.compile(FAMILIES[family](SCHEDULE, momentum=0.9), loss="mse")
    log = RateLog()
    model.fit(
        x, y, batch_size=BATCH, epochs=3, verbose=0, shuffle=False, callbacks=[*callbacks, log]
    )
    assert bits(model.optimizer.current_learning_rate) == bits(SCHEDULE(11))
    return model.get_weights(), log.rows


def _interrupted_then_resumed(
    family: str, x: Any, y: Any, directory: Path, save_freq: Any
) -> tuple[list[Any], list[dict[str, float]]]:
    backup = tf_keras.callbacks.BackupAndRestore(str(directory), save_freq=save_freq)
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit_three_epochs(family, x, y, [backup, Interrupt(after_updates=7)])  # mid-epoch 2
    return _fit_three_epochs(family, x, y, [backup])


@pytest.mark.parametrize("family", FAMILIES)
def test_backup_and_restore_by_epoch_resumes_exactly(family: str, tmp_path: Path) -> None:
    """Interrupted mid-epoch, resumed from the epoch backup: the uninterrupted rates and weights."""
    x, y = make_data()
    weights, rows = _fit_three_epochs(family, x, y, [])
    resumed_weights, resumed_rows = _interrupted_then_resumed(family, x, y, tmp_path, "epoch")
    assert array_bits(resumed_weights) == array_bits(weights)
    assert resumed_rows == rows[4:]  # the interrupted epoch is replayed from its start


def test_backup_and_restore_mid_epoch_restarts_the_epochs_data_upstream(tmp_path: Path) -> None:
    """With save_freq=2 the rates resume exactly; tf_keras feeds the epoch's first batches again.

    tf_keras 2.21 restores `iterations` and resumes the epoch at the batch after
    the backup, but recreates the data iterator from the epoch's start. With an
    epoch whose second half repeats its first half, that makes no difference,
    and the resumed run is bit-identical.
    """
    x, y = make_data()
    weights, rows = _fit_three_epochs("new", x, y, [])
    resumed_weights, resumed_rows = _interrupted_then_resumed("new", x, y, tmp_path / "a", 2)
    assert resumed_rows == rows[6:]  # resumed after update 6, the last backup
    assert array_bits(resumed_weights) != array_bits(weights)  # other data, upstream
    x2, y2 = np.concatenate([x[:16], x[:16]]), np.concatenate([y[:16], y[:16]])
    weights, rows = _fit_three_epochs("new", x2, y2, [])
    resumed_weights, resumed_rows = _interrupted_then_resumed("new", x2, y2, tmp_path / "b", 2)
    assert resumed_rows == rows[6:]
    assert array_bits(resumed_weights) == array_bits(weights)
