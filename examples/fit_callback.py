"""Recipe: the applied rate in ``fit``'s logs, every epoch and every step.

The usual callback computes ``float(schedule(optimizer.iterations))``: that is
the rate of the *next* step, and it re-evaluates the schedule on the host.
``LearningRateLogger`` puts the rate the last update applied into the logs, so
``History``, ``CSVLogger``, the progress bar and ``TensorBoard`` record it;
``RateHistoryToTensorBoard`` sends every update's rate to TensorBoard at its own
step, although ``steps_per_execution=4`` runs Python only once per 4 steps.

Run: ``python examples/fit_callback.py`` (TensorBoard event files need the
``tensorboard`` package: ``pip install tensorboard``).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import introspect_opt
from introspect_opt import IntrospectableSGD, LearningRateLogger, RateHistoryToTensorBoard


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    schedule = keras.optimizers.schedules.InverseTimeDecay(0.1, decay_steps=4, decay_rate=1.0)
    steps_per_execution = 1 if keras.backend.backend() == "torch" else 4
    model.compile(IntrospectableSGD(schedule), loss="mse", steps_per_execution=steps_per_execution)
    with tempfile.TemporaryDirectory() as log_dir:
        logger = LearningRateLogger("batch", hyperparameters=("momentum",))
        board = RateHistoryToTensorBoard(log_dir, interval="batch")
        history = model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[logger, board])
    for epoch, rate in enumerate(history.history["sgd/learning_rate"]):
        last_step = 4 * (epoch + 1) - 1  # the counter value of the epoch's last update
        expected = float(schedule(last_step))
        print(f"epoch {epoch}: applied_lr={rate:.6f} (schedule({last_step})={expected:.6f})")
        assert abs(rate - expected) < 1e-7
    updates, rates = introspect_opt.rate_history(model)  # what went to TensorBoard last
    print("last block of updates:", updates.tolist(), [round(float(r), 6) for r in rates])


if __name__ == "__main__":
    main()
