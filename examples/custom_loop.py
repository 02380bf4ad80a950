"""Recipe: a custom training loop that reports the rate each step applied.

Read inside the ``tf.function`` (XLA-compiled here), ``current_learning_rate``
is ordered after the ``apply_gradients`` before it, so the step can return the
rate it just used: no second evaluation of the schedule, no host round-trip
inside the step.

Run: ``python examples/custom_loop.py``
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

from introspect_opt import IntrospectableSGD


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    schedule = keras.optimizers.schedules.CosineDecay(0.0, 8, warmup_target=0.1, warmup_steps=4)
    optimizer = IntrospectableSGD(schedule, momentum=0.9)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=True)
    def train_step(xb: Any, yb: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, optimizer.current_learning_rate

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    for step, (xb, yb) in enumerate(dataset, start=1):
        loss, applied = train_step(xb, yb)
        print(f"step {step}: loss={float(loss):.4f} applied_lr={float(applied):.6f}")
        assert abs(float(applied) - float(schedule(step - 1))) < 1e-6


if __name__ == "__main__":
    main()
