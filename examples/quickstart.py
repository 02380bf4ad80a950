"""Quick start: train, see the rate each epoch applied, save, reload, still there.

Run: ``python examples/quickstart.py``
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from introspect_opt import IntrospectableSGD


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    schedule = keras.optimizers.schedules.ExponentialDecay(
        0.05, decay_steps=8, decay_rate=0.5, staircase=True
    )
    model.compile(IntrospectableSGD(schedule, momentum=0.9), loss="mse")

    print("epoch  updates  applied rate  next rate (optimizer.learning_rate)")
    report = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: print(
            f"{epoch:>5}  {int(model.optimizer.iterations):>7}  "
            f"{float(model.optimizer.current_learning_rate):>12.6f}  "
            f"{float(model.optimizer.learning_rate):>9.6f}"
        )
    )
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[report])

    applied = float(model.optimizer.current_learning_rate)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        restored = keras.models.load_model(path)
    reloaded = float(restored.optimizer.current_learning_rate)
    print(f"saved and reloaded as {type(restored.optimizer).__name__}: applied rate {reloaded:.6f}")
    assert reloaded == applied, (reloaded, applied)
    assert int(restored.optimizer.iterations) == 24


if __name__ == "__main__":
    main()
