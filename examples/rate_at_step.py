"""Recipe: which learning rate did global step N apply?

The usual answer, ``schedule(N)``, is off by one: step N (the N-th update) ran
with the optimizer's counter at N-1. With introspect_opt every checkpoint
carries the applied rate, so restoring the checkpoint written at step N and
reading ``current_learning_rate`` answers the question exactly, also for a
float rate changed by callbacks, where no schedule could tell.

Run: ``python examples/rate_at_step.py``
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

from introspect_opt import IntrospectableSGD


def make_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])


def main() -> None:
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([4, 8], [0.1, 0.01, 0.001])
    model = make_model()
    optimizer = IntrospectableSGD(schedule)
    model.compile(optimizer, loss="mse")
    x, y = np.ones((48, 4), "float32"), np.zeros((48, 1), "float32")

    with tempfile.TemporaryDirectory() as tmp:
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model, optimizer=optimizer), tmp, max_to_keep=None
        )
        save_every_step = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: manager.save(
                checkpoint_number=int(optimizer.iterations)
            )
        )
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[save_every_step])

        print("step  applied (restored)  schedule(step) [off by one]")
        for step in (4, 5, 8, 9):
            fresh = make_model()
            fresh_optimizer = IntrospectableSGD(schedule)
            fresh.compile(fresh_optimizer, loss="mse")
            tf.train.Checkpoint(model=fresh, optimizer=fresh_optimizer).restore(
                f"{tmp}/ckpt-{step}"
            ).expect_partial()
            applied = float(fresh_optimizer.current_learning_rate)
            naive = float(schedule(step))
            print(f"{step:>4}  {applied:>18.4f}  {naive:>14.4f}")
            assert applied == float(schedule(step - 1))


if __name__ == "__main__":
    main()
