"""Recipe: preview the whole schedule before training, then plot it with what was applied.

``preview_learning_rates(optimizer, iterations)`` says what
``current_learning_rate`` will read after each of the given updates: gradient
accumulation and the plateau multiplier included, without training.
``plot_learning_rate`` draws that curve and marks the rates the optimizer
actually applied (kept on the device with ``keep_rate_history``).

Run: ``python examples/schedule_preview.py [out.png]`` (needs matplotlib, the
``plot`` extra: ``pip install ".[plot]"`` in a checkout). Without an argument the
PNG is ``schedule_preview.png`` in the current folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import introspect_opt


def main(out: Path) -> None:
    # Linear warmup to 0.1 over 200 updates, then cosine decay over 1800.
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=1800, alpha=0.02, warmup_target=0.1, warmup_steps=200
    )
    optimizer = introspect_opt.keep_rate_history(
        introspect_opt.IntrospectableSGD(schedule, momentum=0.9), 64
    )

    steps = [0, 1, 100, 200, 201, 1000, 2000]
    preview = introspect_opt.preview_learning_rates(optimizer, steps)
    print("before training, current_learning_rate will read:")
    for n, rate in zip(steps, preview, strict=True):
        print(f"  after update {n:>4}: {rate:.6f}")

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1280, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer, loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 320 updates

    # What the updates applied, read from the device in one go, is what the
    # preview said they would apply.
    updates, applied = introspect_opt.rate_history(model)
    expected = introspect_opt.preview_learning_rates(model, updates)
    worst = float(np.max(np.abs(applied - expected)))
    print(f"updates {updates[0]}..{updates[-1]}: applied equals the preview (max diff {worst:.1e})")
    assert worst <= 1e-8, worst

    written = introspect_opt.plot_learning_rate(model, out, iterations=2000)
    print(f"plot written to {written}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "schedule_preview.png").resolve())
