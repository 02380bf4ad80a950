"""LearningRateLogger in tf_keras fit: the applied rate where Keras 2 users look."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tfk_helpers import SCHEDULE, make_data, make_model

from introspect_opt import tf_keras as itk

FAMILIES = {
    "new": itk.IntrospectableSGD,
    "legacy": itk.IntrospectableLegacySGD,
}


def expected(step: int) -> float:
    """The rate update ``step + 1`` applied: the schedule at the raw counter ``step``."""
    return float(np.float32(SCHEDULE(step)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_epoch_logs_reach_history_and_csv(family: str, tmp_path: Path) -> None:
    """Epoch logs carry the rate the epoch's last update applied, for CSVLogger too."""
    model = make_model()
    model.compile(FAMILIES[family](SCHEDULE, momentum=0.9), loss="mse")
    x, y = make_data(32)
    logger = itk.LearningRateLogger(hyperparameters=("momentum",))
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[logger, tf_keras.callbacks.CSVLogger(str(csv_path))],
    )
    assert history.history["SGD/learning_rate"] == [expected(3), expected(7)]
    assert history.history["SGD/momentum"] == [pytest.approx(0.9)] * 2
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["SGD/learning_rate"]) for r in rows] == [expected(3), expected(7)]
    # tf_keras's own key, where it has one, is the next step's rate: not touched.
    assert "lr" not in history.history


@pytest.mark.parametrize("interval", ["batch", 3])
def test_batch_logs_every_interval(interval: Any) -> None:
    """Batch logs get the rate after each read: every batch, or every N steps."""
    model = make_model()
    model.compile(itk.IntrospectableSGD(SCHEDULE), loss="mse")
    rows: list[tuple[int, float]] = []

    class Seen(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if "SGD/learning_rate" in (logs or {}):
                rows.append((int(self.model.optimizer.iterations), logs["SGD/learning_rate"]))

    x, y = make_data(48)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[itk.LearningRateLogger(interval), Seen()],
    )
    steps = list(range(1, 7)) if interval == "batch" else [3, 6]
    assert rows == [(n, expected(n - 1)) for n in steps]


def test_mixed_precision_keys_look_through_the_loss_scale_optimizer() -> None:
    """Under mixed_float16 the key is the inner optimizer's, and the rate exact."""
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    model = make_model()
    model.compile(itk.IntrospectableSGD(SCHEDULE), loss="mse")
    assert isinstance(model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    x, y = make_data(16)
    history = model.fit(
        x, y, batch_size=8, epochs=1, verbose=0, callbacks=[itk.LearningRateLogger()]
    )
    iterations = int(model.optimizer.inner_optimizer.iterations)
    assert history.history["SGD/learning_rate"] == [
        float(tf.cast(itk.current_learning_rate(model), tf.float32))
    ]
    assert iterations >= 1


def test_bad_input_is_refused_with_the_fix() -> None:
    """Invalid arguments, Keras 3 optimizers and plain ones: errors that say what to do."""
    with pytest.raises(ValueError, match="interval must be"):
        itk.LearningRateLogger("step")
    with pytest.raises(TypeError, match=r"diagnostics=\.\.\.\) is Keras 3 only"):
        itk.LearningRateLogger(diagnostics=True)
    with pytest.raises(TypeError, match=r"optimizers\['g'\] must be an introspectable optimizer"):
        itk.LearningRateLogger(optimizers={"g": tf_keras.optimizers.Adam()})
    model = make_model()
    model.compile(tf_keras.optimizers.SGD(0.1), loss="mse")
    with pytest.raises(
        TypeError, match=r"LearningRateLogger cannot read this model's rate.*introspect"
    ):
        model.fit(*make_data(8), verbose=0, callbacks=[itk.LearningRateLogger()])
