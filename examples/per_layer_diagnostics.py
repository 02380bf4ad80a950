"""Recipe: what is my optimizer doing to each layer?

A small convolutional network on MNIST-shaped random data (28x28x1, 10
classes) trains for a few epochs with ``IntrospectableAdamW`` and a warmup +
cosine schedule. ``record_diagnostics(model, per_variable=True)`` has every
applied update also record, on the device, each variable's gradient norm,
update norm and weight norm. A small callback reads them after every batch
with ``last_update_diagnostics(model, per_variable=True)``; the script then

- draws each kernel's ``update_to_weight_ratio`` over the steps (log scale,
  the common 1e-3 rule of thumb shaded) into a PNG,
- prints the last step's values for every variable,
- prints the variables whose last ratio lies outside the band, with
  ``flag_outside_band``: a recipe to copy, not a library function.

Run: ``python examples/per_layer_diagnostics.py [--out PATH] [--low L --high H]``
(needs matplotlib, the ``plot`` extra: ``pip install ".[plot]"`` in a checkout).
The default PNG is ``docs/img/per_layer_update_ratio.png`` under the current
folder, the picture of docs/what-is-my-optimizer-doing.md when run from the
repository root. Works on the TensorFlow, JAX and torch backends.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import introspect_opt

Rows = dict[str, dict[str, float]]


class PerVariableRecorder(keras.callbacks.Callback):
    """Keeps every step's per-variable diagnostics (a list grows by one dict per step)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Rows] = []

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.steps.append(introspect_opt.last_update_diagnostics(self.model, per_variable=True))


def flag_outside_band(
    rows: Rows, low: float, high: float, key: str = "update_to_weight_ratio"
) -> dict[str, float]:
    """The variables whose ``key`` lies outside ``[low, high]``, with that value.

    ``nan`` (a variable the update did not touch) is flagged too: it is not
    inside the band.
    """
    return {
        path: values[key]
        for path, values in rows.items()
        if not low <= values[key] <= high  # False for nan: flagged
    }


def make_data(samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped noise images; the label is where a brighter 7x7 square sits (learnable)."""
    rng = np.random.default_rng(seed)
    x = 0.5 * rng.random((samples, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=samples)
    for image, label in zip(x, y, strict=True):
        row, column = divmod(int(label), 5)  # 2 rows of 5 places
        image[3 + 12 * row : 10 + 12 * row, 1 + 5 * column : 8 + 5 * column] += 0.5
    return x, y


def make_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv_1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, activation="relu", name="conv_2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="dense_1"),
            keras.layers.Dense(10, activation="softmax", name="classifier"),
        ],
        name="mnist_like",
    )


def plot(steps: list[Rows], out: Path, low: float, high: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernels = [path for path in steps[-1] if path.endswith("kernel")]
    x = np.arange(1, len(steps) + 1)
    figure, axes = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    axes.axhspan(low, high, color="tab:green", alpha=0.12, label=f"band [{low:g}, {high:g}]")
    axes.axhline(1e-3, color="tab:green", linewidth=0.8, linestyle="--")
    for path in kernels:
        ratios = [rows[path]["update_to_weight_ratio"] for rows in steps]
        axes.plot(x, ratios, linewidth=1.4, label=path.split("/")[-2])
    axes.set_yscale("log")
    axes.set_xlabel("applied update (step)")
    axes.set_ylabel("update_norm / weight_norm")
    axes.set_title("Per-layer update-to-weight ratio (AdamW, warmup + cosine decay)")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8, ncol=2)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)


def main(out: Path, low: float, high: float, epochs: int = 4) -> list[Rows]:
    keras.utils.set_random_seed(0)
    x, y = make_data(512)
    batch_size = 32
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        1e-4, decay_steps=steps - 10, alpha=0.05, warmup_target=3e-3, warmup_steps=10
    )
    model = make_model()
    model.compile(
        introspect_opt.IntrospectableAdamW(schedule, weight_decay=0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    introspect_opt.record_diagnostics(model, per_variable=True)

    recorder = PerVariableRecorder()
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[recorder])
    assert len(recorder.steps) == steps, (len(recorder.steps), steps)
    print(
        f"{steps} updates on {keras.backend.backend()}; "
        f"accuracy {history.history['accuracy'][0]:.2f} -> {history.history['accuracy'][-1]:.2f}"
    )

    last = recorder.steps[-1]
    print("\nlast update, per variable:")
    print(f"{'variable':<28} {'grad':>9} {'update':>9} {'weight':>9} {'ratio':>9} {'eff. lr':>9}")
    for path, values in last.items():
        print(
            f"{path:<28} {values['gradient_norm']:9.2e} {values['update_norm']:9.2e} "
            f"{values['weight_norm']:9.2e} {values['update_to_weight_ratio']:9.2e} "
            f"{values['effective_learning_rate']:9.2e}"
        )

    flagged = flag_outside_band(last, low, high)
    print(f"\noutside [{low:g}, {high:g}] at the last update: {', '.join(flagged) or 'none'}")
    print("updates outside the band over the run, per variable:")
    per_step = [flag_outside_band(rows, low, high) for rows in recorder.steps]
    for path in last:
        outside = [step for step, found in enumerate(per_step, 1) if path in found]
        span = f" (updates {outside[0]}..{outside[-1]})" if outside else ""
        print(f"  {path}: {len(outside)} of {steps}{span}")

    plot(recorder.steps, out, low, high)
    print(f"\nplot written to {out.resolve()}")
    return recorder.steps


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/per_layer_update_ratio.png"))
    parser.add_argument("--low", type=float, default=1e-4, help="lower edge of the band")
    parser.add_argument("--high", type=float, default=1e-2, help="upper edge of the band")
    parser.add_argument("--epochs", type=int, default=4)
    arguments = parser.parse_args()
    main(arguments.out, arguments.low, arguments.high, arguments.epochs)
