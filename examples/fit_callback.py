"""Recipe: read the applied rate inside a ``fit`` callback.

The usual callback computes ``float(schedule(optimizer.iterations))``: that is
the rate of the *next* step, and it re-evaluates the schedule on the host.
``current_learning_rate`` is the rate the last step applied, kept on the
device by that step. Here it goes into the epoch logs, so ``History`` (and
``CSVLogger``, ``TensorBoard``, the progress bar) record it.

Run: ``python examples/fit_callback.py``
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from introspect_opt import IntrospectableSGD


class AppliedRateToLogs(keras.callbacks.Callback):
    """Adds the rate the last update applied to each epoch's logs."""

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if logs is not None:
            logs["applied_lr"] = float(self.model.optimizer.current_learning_rate)


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    schedule = keras.optimizers.schedules.InverseTimeDecay(0.1, decay_steps=4, decay_rate=1.0)
    model.compile(IntrospectableSGD(schedule), loss="mse")
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[AppliedRateToLogs()])
    for epoch, rate in enumerate(history.history["applied_lr"]):
        last_step = 4 * (epoch + 1) - 1  # the counter value of the epoch's last update
        expected = float(schedule(last_step))
        print(f"epoch {epoch}: applied_lr={rate:.6f} (schedule({last_step})={expected:.6f})")
        assert abs(rate - expected) < 1e-7


if __name__ == "__main__":
    main()
