"""ScaleLearningRateOnPlateau: plateau reduction for any schedule, as checkpointed state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import SCHEDULE, make_data, make_model, schedule_value, sync, weights_of

from introspect_opt import IntrospectableSGD, LearningRateLogger, ScaleLearningRateOnPlateau
from introspect_opt._features.plateau import multiplier as schedule_multiplier


def always_plateau(**kwargs: Any) -> ScaleLearningRateOnPlateau:
    """Every epoch after the first is a plateau (no change counts as improvement)."""
    return ScaleLearningRateOnPlateau("loss", factor=0.5, patience=0, min_delta=1e9, **kwargs)


def fit(model: Any, callbacks: list[Any], epochs: int, initial_epoch: int = 0) -> Any:
    x, y = make_data(32)
    return model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        initial_epoch=initial_epoch,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )


def test_keras_reduce_lr_on_plateau_cannot_handle_a_schedule() -> None:
    """The motivating fact: Keras's own callback raises TypeError on a schedule."""
    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE), loss="mse")
    keras_plateau = keras.callbacks.ReduceLROnPlateau("loss", patience=0, min_delta=1e9)
    with pytest.raises(TypeError):
        fit(model, [keras_plateau], epochs=3)


def test_scales_the_schedule_and_the_applied_rate() -> None:
    """After each plateau the whole schedule is scaled; the applied rate shows it."""
    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    history = fit(model, [always_plateau(), LearningRateLogger()], epochs=3)
    # 4 steps per epoch; the multiplier changes at the end of epochs 2 and 3.
    assert history.history["sgd/learning_rate_multiplier"] == [1.0, 0.5, 0.25]
    rates = history.history["sgd/learning_rate"]
    np.testing.assert_allclose(
        rates,
        [
            schedule_value(SCHEDULE, 3),
            schedule_value(SCHEDULE, 7),
            0.5 * schedule_value(SCHEDULE, 11),
        ],
        rtol=1e-6,
    )
    optimizer = sync(model)
    # Keras's own view (the next update's rate) includes the multiplier too.
    np.testing.assert_allclose(
        float(optimizer.learning_rate), 0.25 * schedule_value(SCHEDULE, 12), rtol=1e-6
    )


def test_multiplier_one_is_bit_identical_to_plain_sgd() -> None:
    """With the multiplier in place but at 1, weights equal plain SGD's bit for bit."""
    plain = make_model()
    plain.compile(keras.optimizers.SGD(SCHEDULE, momentum=0.9), loss="mse")
    fit(plain, [], epochs=2)
    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    fit(model, [ScaleLearningRateOnPlateau("loss", patience=100)], epochs=2)
    assert schedule_multiplier(model.optimizer) == 1.0
    for a, b in zip(weights_of(plain), weights_of(model), strict=True):
        assert a.tobytes() == b.tobytes()


def test_multiplier_is_saved_and_resumed(tmp_path: Path) -> None:
    """Saved with the model, restored by load_model, and training resumes identically."""
    reference = make_model()
    reference.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    fit(reference, [always_plateau()], epochs=2)
    fit(reference, [], epochs=4, initial_epoch=2)  # trains on at multiplier 0.5

    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    fit(model, [always_plateau()], epochs=2)
    model.save(tmp_path / "m.keras")
    resumed = keras.models.load_model(tmp_path / "m.keras")
    assert schedule_multiplier(resumed.optimizer) == 0.5
    assert float(resumed.optimizer.current_learning_rate) == float(
        sync(model).current_learning_rate
    )
    fit(resumed, [], epochs=4, initial_epoch=2)
    for a, b in zip(weights_of(reference), weights_of(resumed), strict=True):
        assert a.tobytes() == b.tobytes()
    assert schedule_multiplier(resumed.optimizer) == schedule_multiplier(reference.optimizer)


def test_plain_files_reset_the_multiplier_and_plain_optimizers_read_ours(tmp_path: Path) -> None:
    """A plain SGD file means 'no multiplier' (1); plain SGD loads our files."""
    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    fit(model, [always_plateau()], epochs=2)
    ours = tmp_path / "ours.weights.h5"
    model.save_weights(ours)
    plain = make_model()
    plain.compile(keras.optimizers.SGD(SCHEDULE, momentum=0.9), loss="mse")
    fit(plain, [], epochs=1)
    plain.load_weights(ours)
    assert int(plain.optimizer.iterations) == 8
    theirs = tmp_path / "plain.weights.h5"
    plain.save_weights(theirs)
    model.load_weights(theirs)
    assert schedule_multiplier(model.optimizer) == 1.0


@pytest.mark.tf_only
def test_tf_checkpoint_restores_the_multiplier(tmp_path: Path) -> None:
    """tf.train.Checkpoint restores the multiplier into an optimizer that has one."""
    import tensorflow as tf

    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE), loss="mse")
    fit(model, [always_plateau()], epochs=3)
    path = tf.train.Checkpoint(optimizer=model.optimizer).save(str(tmp_path / "ckpt"))
    target = make_model()
    target.compile(IntrospectableSGD(SCHEDULE), loss="mse")
    fit(target, [ScaleLearningRateOnPlateau("loss", patience=100)], epochs=1)
    tf.train.Checkpoint(optimizer=target.optimizer).restore(path)
    assert schedule_multiplier(target.optimizer) == 0.25
    assert float(target.optimizer.current_learning_rate) == float(
        model.optimizer.current_learning_rate
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factor": 1.0}, r"factor must be a number in \(0, 1\); received 1.0"),
        ({"factor": 0}, r"factor must be a number in \(0, 1\)"),
        ({"patience": -1}, r"patience must be an int >= 0; received -1"),
        ({"mode": "up"}, r"mode must be \"auto\", \"min\" or \"max\"; received 'up'"),
        ({"min_multiplier": 1.5}, r"min_multiplier must be a number in \[0, 1\)"),
        ({"monitor": ""}, r"monitor must be a metric name"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """Invalid arguments fail in __init__, saying what is valid."""
    with pytest.raises(ValueError, match=message):
        ScaleLearningRateOnPlateau(**kwargs)


def test_plain_optimizer_fails_at_train_begin() -> None:
    """A plain optimizer gets one clear error naming the fix, before any step."""
    model = make_model()
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    with pytest.raises(TypeError, match=r"ScaleLearningRateOnPlateau .*introspect\(optimizer\)"):
        fit(model, [always_plateau()], epochs=1)
    assert int(model.optimizer.iterations) == 0


def test_min_multiplier_bounds_the_scaling() -> None:
    """The multiplier never goes below min_multiplier."""
    model = make_model()
    model.compile(IntrospectableSGD(0.1), loss="mse")
    history = fit(model, [always_plateau(min_multiplier=0.3)], epochs=4)
    floor = float(np.float32(0.3))  # the multiplier is a float32 variable
    assert history.history["sgd/learning_rate_multiplier"] == [1.0, 0.5, floor, floor]


class CrashAtEpoch(keras.callbacks.Callback):
    """Interrupts fit at the start of one epoch, as a killed job would."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_brings_the_multiplier_back(tmp_path: Path) -> None:
    """A job resumed by BackupAndRestore continues at the multiplier it had reached."""
    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE), loss="mse")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        # The plateau callback first: at each epoch end it scales, then the
        # backup is written with the new multiplier.
        fit(model, [always_plateau(), backup, CrashAtEpoch(2)], epochs=4)
    resumed = make_model(seed=5)  # a fresh process: nothing carried in memory
    resumed.compile(IntrospectableSGD(SCHEDULE), loss="mse")
    plateau = ScaleLearningRateOnPlateau("loss", patience=100)  # no further scaling
    history = fit(resumed, [plateau, backup], epochs=4)
    # Epochs 0-1 ran before the crash (multiplier 1, then 0.5); 2-3 resume at 0.5.
    assert history.history["sgd/learning_rate_multiplier"] == [0.5, 0.5]
    assert int(resumed.optimizer.iterations) == 16


@pytest.mark.parametrize(("patience", "cooldown"), [(0, 0), (1, 0), (2, 0), (1, 1)])
def test_same_plateau_decisions_as_keras(patience: int, cooldown: int) -> None:
    """On a float rate, the multiplier follows Keras's ReduceLROnPlateau epoch for epoch."""
    recorded = {}
    for name in ("keras", "ours"):
        model = make_model()
        model.compile(IntrospectableSGD(0.1), loss="mse")
        if name == "keras":
            callback: Any = keras.callbacks.ReduceLROnPlateau(
                "loss", factor=0.5, patience=patience, cooldown=cooldown, min_delta=1e9
            )
        else:
            callback = ScaleLearningRateOnPlateau(
                "loss", factor=0.5, patience=patience, cooldown=cooldown, min_delta=1e9
            )
        rates = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs, m=model: logs.update(
                rate=float(sync(m).current_learning_rate)
            )
        )
        recorded[name] = fit(model, [callback, rates], epochs=7).history["rate"]
    assert recorded["ours"] == recorded["keras"]


def test_callbacks_that_set_the_rate_do_not_apply_the_multiplier_twice() -> None:
    """LearningRateScheduler reads the rate and sets it back: the multiplier applies once."""
    model = make_model()
    model.compile(IntrospectableSGD(0.1), loss="mse")
    identity = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr)
    logger = LearningRateLogger()
    history = fit(model, [identity, always_plateau(), logger], epochs=4)
    assert history.history["sgd/learning_rate_multiplier"] == [1.0, 0.5, 0.25, 0.125]
    # Each epoch applies the multiplier chosen at the end of the one before.
    np.testing.assert_allclose(
        history.history["sgd/learning_rate"], [0.1, 0.1, 0.05, 0.025], rtol=1e-6
    )
    np.testing.assert_allclose(float(sync(model).learning_rate), 0.1 * 0.125, rtol=1e-6)


@pytest.mark.tf_only
def test_tf_checkpoint_restore_before_fit_keeps_the_multiplier(tmp_path: Path) -> None:
    """Restored into a fresh, unbuilt optimizer before fit, the multiplier is not lost."""
    import tensorflow as tf

    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE), loss="mse")
    fit(model, [always_plateau()], epochs=3)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(tmp_path / "c"))
    resumed = make_model(seed=3)
    resumed.compile(IntrospectableSGD(SCHEDULE), loss="mse")
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).restore(path)
    rates = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: rates.append(
            float(resumed.optimizer.current_learning_rate)
        )
    )
    fit(resumed, [probe], epochs=1)
    assert schedule_multiplier(resumed.optimizer) == 0.25
    np.testing.assert_allclose(rates[0], 0.25 * schedule_value(SCHEDULE, 12), rtol=1e-6)


@pytest.mark.tf_only
def test_tf_checkpoint_restore_into_a_built_optimizer_creates_the_multiplier(
    tmp_path: Path,
) -> None:
    """A built optimizer without a multiplier gets the checkpoint's, not a silent 1."""
    import tensorflow as tf

    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE), loss="mse")
    fit(model, [always_plateau()], epochs=3)
    path = tf.train.Checkpoint(optimizer=model.optimizer).save(str(tmp_path / "c"))
    target = make_model()
    target.compile(IntrospectableSGD(SCHEDULE), loss="mse")
    target.optimizer.build(target.trainable_variables)
    tf.train.Checkpoint(optimizer=target.optimizer).restore(path).assert_consumed()
    assert schedule_multiplier(target.optimizer) == 0.25
    assert float(target.optimizer.current_learning_rate) == float(
        model.optimizer.current_learning_rate
    )
