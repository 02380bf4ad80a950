"""BackupAndRestore after a crash in the middle of an epoch (docs/persistence.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import SCHEDULE, make_data, make_model, schedule_value, sync

from introspect_opt import IntrospectableSGD

EPOCHS, BATCHES = 4, 6


class Crash(Exception):
    """Stands in for a pre-empted machine."""


class CrashAt(keras.callbacks.Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.epoch, self.batch, self.current_epoch = epoch, batch, 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.current_epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if (self.current_epoch, batch) == (self.epoch, self.batch):
            raise Crash(f"pre-empted at epoch {self.epoch} batch {batch}")


class Trajectory(keras.callbacks.Callback):
    """(epoch, iterations, applied rate) after every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, int, float]] = []
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        optimizer = sync(self.model)
        self.rows.append(
            (self.epoch, int(optimizer.iterations), float(optimizer.current_learning_rate))
        )


def _run(backup_dir: Path, callbacks: list[Any], save_freq: Any = "epoch") -> Any:
    model = make_model(seed=0)
    model.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    x, y = make_data(8 * BATCHES)
    backup = keras.callbacks.BackupAndRestore(str(backup_dir), save_freq=save_freq)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=EPOCHS,
        verbose=0,
        shuffle=False,
        callbacks=[backup, *callbacks],
    )
    return model


def test_crash_mid_epoch_resumes_to_the_same_rates_and_weights(tmp_path: Path) -> None:
    """Default epoch-level backups: same trajectory, same weights, bit for bit."""
    straight = Trajectory()
    reference = _run(tmp_path / "straight", [straight])

    with pytest.raises(Crash):
        _run(tmp_path / "backup", [Trajectory(), CrashAt(epoch=2, batch=3)])
    resumed_trajectory = Trajectory()
    resumed = _run(tmp_path / "backup", [resumed_trajectory])

    # Keras replays the interrupted epoch from the state saved after epoch 1.
    assert [row[0] for row in resumed_trajectory.rows] == [2] * BATCHES + [3] * BATCHES
    assert resumed_trajectory.rows == straight.rows[2 * BATCHES :]
    for a, b in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.optimizer.iterations) == EPOCHS * BATCHES


def test_batch_level_backups_replay_the_epoch_with_a_shifted_schedule(tmp_path: Path) -> None:
    """save_freq=N (Keras 3.15): documented behaviour, measured.

    Keras restores the step counter saved at the last backup but restarts the
    interrupted epoch at its first batch. The rate stays consistent with the
    step counter (the first update after resuming applies s(saved steps)), but
    the batches before the backup point are seen twice and the run ends with
    that many extra updates.
    """
    save_freq, crash_batch = 2, 5  # last backup after batch index 3 of epoch 1
    with pytest.raises(Crash):
        _run(tmp_path / "backup", [CrashAt(epoch=1, batch=crash_batch)], save_freq=save_freq)
    resumed_trajectory = Trajectory()
    resumed = _run(tmp_path / "backup", [resumed_trajectory], save_freq=save_freq)

    saved_steps = BATCHES + 4  # epoch 0, then batches 0..3 of epoch 1
    first_epoch, first_iterations, first_rate = resumed_trajectory.rows[0]
    assert (first_epoch, first_iterations) == (1, saved_steps + 1)
    assert first_rate == pytest.approx(float(schedule_value(SCHEDULE, saved_steps)), rel=1e-6)
    replayed = 4
    assert int(resumed.optimizer.iterations) == EPOCHS * BATCHES + replayed
    for _, iterations, rate in resumed_trajectory.rows:
        np.testing.assert_allclose(rate, schedule_value(SCHEDULE, iterations - 1), rtol=1e-6)
