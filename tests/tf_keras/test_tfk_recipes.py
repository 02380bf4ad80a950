"""The three recipes of the original question, as `tf.keras` code under TF_USE_LEGACY_KERAS=1.

Each is written the way a TF2 user writes it (`import tensorflow as tf`,
`tf.keras...`), with only the optimizer class changed, and prints the rate
the optimizer applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import introspect_opt
import introspect_opt.tf_keras
from introspect_opt.tf_keras import IntrospectableSGD


def test_tf_keras_is_tf_keras_here() -> None:
    """Under TF_USE_LEGACY_KERAS=1, tf.keras is tf_keras and ours subclasses its SGD."""
    assert tf.keras.optimizers.SGD is tf_keras.optimizers.SGD
    assert issubclass(IntrospectableSGD, tf.keras.optimizers.SGD)


def test_the_top_level_import_gives_the_tf_keras_class() -> None:
    """`from introspect_opt import IntrospectableSGD` follows TF_USE_LEGACY_KERAS."""
    assert introspect_opt.IntrospectableSGD is introspect_opt.tf_keras.IntrospectableSGD


def _data() -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def test_recipe_custom_training_loop(capsys: pytest.CaptureFixture[str]) -> None:
    """A custom loop under XLA returns and prints the rate each step applied."""
    x, y = _data()
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(4,))])
    schedule = tf.keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    optimizer = IntrospectableSGD(schedule, momentum=0.9)
    loss_fn = tf.keras.losses.MeanSquaredError()

    @tf.function(jit_compile=True)
    def train_step(xb: Any, yb: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, optimizer.current_learning_rate

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    for step, (xb, yb) in enumerate(dataset):
        loss, lr = train_step(xb, yb)
        print(f"step {step}: loss={float(loss):.4f} applied lr={float(lr):.6f}")

    lines = capsys.readouterr().out.splitlines()
    assert [line.split("applied lr=")[1] for line in lines] == [
        f"{float(schedule(step)):.6f}" for step in range(4)
    ]


def test_recipe_fit_callback(capsys: pytest.CaptureFixture[str]) -> None:
    """A fit callback prints the rate the epoch's last update applied (not the next one)."""
    x, y = _data()

    class PrintAppliedLR(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            applied = float(self.model.optimizer.current_learning_rate)
            print(f"epoch {epoch}: applied lr={applied:.6f}")

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(4,))])
    schedule = tf.keras.optimizers.schedules.InverseTimeDecay(0.1, decay_steps=4, decay_rate=1.0)
    model.compile(optimizer=IntrospectableSGD(schedule), loss="mse")
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[PrintAppliedLR()])

    lines = capsys.readouterr().out.splitlines()
    # Epoch e's last update ran with the step counter at 4 * (e + 1) - 1.
    assert lines == [f"epoch {e}: applied lr={float(schedule(4 * e + 3)):.6f}" for e in range(3)]


def test_recipe_checkpoint_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint written at a step tells, after restoring, the rate that step applied."""
    x, y = _data()
    schedule = tf.keras.optimizers.schedules.PiecewiseConstantDecay([3, 6], [0.1, 0.01, 0.001])

    def build() -> tuple[Any, Any]:
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(4,))])
        model.compile(optimizer=IntrospectableSGD(schedule, momentum=0.9), loss="mse")
        return model, model.optimizer

    model, optimizer = build()
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=None)

    class SaveEveryStep(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            manager.save(checkpoint_number=int(optimizer.iterations.numpy()))

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[SaveEveryStep()])

    for step in (4, 5, 8):  # global step = number of updates applied
        restored_model, restored = build()
        tf.train.Checkpoint(model=restored_model, optimizer=restored).read(
            str(tmp_path / f"ckpt-{step}")
        ).assert_existing_objects_matched()
        print(f"global step {step}: applied lr={float(restored.current_learning_rate):.4f}")

    assert capsys.readouterr().out.splitlines() == [
        "global step 4: applied lr=0.1000",  # update 4 ran at counter 3: s(3) = 0.1
        "global step 5: applied lr=0.0100",
        "global step 8: applied lr=0.0010",
    ]
