"""keras.optimizers.MultiOptimizer: the applied rate of every sub-optimizer, by label."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import bits, schedule_value, sync, weights_of

import introspect_opt
from introspect_opt import (
    IntrospectableAdam,
    IntrospectableSGD,
    LearningRateLogger,
    RateHistoryToTensorBoard,
)

BACKEND = keras.backend.backend()
MultiOptimizer = keras.optimizers.MultiOptimizer
OptimizerMap = keras.optimizers.OptimizerMap

# Exactly representable rates: expected values compare bit for bit.
STAIRS = keras.optimizers.schedules.PiecewiseConstantDecay([2, 5], [2.0**-4, 2.0**-5, 2.0**-6])
STEPS_PER_EPOCH = 4
X = np.random.RandomState(0).rand(4 * STEPS_PER_EPOCH, 3).astype("float32")
Y = np.random.RandomState(1).rand(4 * STEPS_PER_EPOCH, 1).astype("float32")


def make_model() -> Any:
    """Two Dense layers: ``first`` trains with Adam, ``second`` with SGD."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="first")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, name="second")(hidden))


def make_multi(plain: bool = False) -> Any:
    """Adam on a schedule for ``first``, SGD with momentum (the default) for the rest."""
    adam = (keras.optimizers.Adam if plain else IntrospectableAdam)(STAIRS)
    sgd = (keras.optimizers.SGD if plain else IntrospectableSGD)(0.01, momentum=0.9)
    return MultiOptimizer(OptimizerMap(sgd, {"first/.*": adam}))


def compiled(optimizer: Any) -> Any:
    model = make_model()
    model.compile(optimizer, loss="mse")
    return model


def fit(model: Any, epochs: int = 1, callbacks: Any = ()) -> Any:
    return model.fit(
        X, Y, batch_size=4, epochs=epochs, verbose=0, shuffle=False, callbacks=list(callbacks)
    )


def rates(obj: Any) -> dict[str, float]:
    return {name: float(rate) for name, rate in introspect_opt.current_learning_rate(obj).items()}


def expected_rates(updates: int) -> dict[str, float]:
    """What ``updates`` updates applied last: Adam's schedule at ``updates - 1``, SGD's 0.01."""
    return {"adam": float(schedule_value(STAIRS, updates - 1)), "sgd": float(np.float32(0.01))}


def assert_same_weights(a: Any, b: Any) -> None:
    for mine, reference in zip(weights_of(a), weights_of(b), strict=True):
        np.testing.assert_array_equal(mine, reference)


@pytest.fixture(scope="module")
def uninterrupted() -> Any:
    """A plain Keras MultiOptimizer of plain Adam and SGD, trained 2 epochs."""
    model = compiled(make_multi(plain=True))
    fit(model, epochs=2)
    sync(model)
    return model


# --- current_learning_rate ------------------------------------------------------


def test_current_learning_rate_is_a_dict_by_label(uninterrupted: Any) -> None:
    """Each sub-optimizer's applied rate, keyed by its label; updates bit-identical to plain."""
    multi = make_multi()
    model = compiled(multi)
    before = rates(model)  # before any update: the rates the first update will use
    assert before == expected_rates(1)
    fit(model, epochs=2)
    assert rates(model) == rates(multi) == expected_rates(2 * STEPS_PER_EPOCH)
    assert list(introspect_opt.current_learning_rate(model)) == ["adam", "sgd"]
    assert_same_weights(model, uninterrupted)
    # A single optimizer still gives one scalar tensor, not a dict.
    single = IntrospectableSGD(0.01)
    assert float(introspect_opt.current_learning_rate(single)) == np.float32(0.01)


def test_optimizer_variables_of_a_multi_optimizer() -> None:
    """Given values of the MultiOptimizer's variables, each sub-optimizer's rate comes from them."""
    multi = make_multi()
    model = compiled(multi)
    fit(model)
    sync(model)
    values = [keras.ops.convert_to_numpy(v) for v in multi.variables]
    assert rates(model) == expected_rates(STEPS_PER_EPOCH)
    fit(model)
    read = introspect_opt.current_learning_rate(multi, values)
    assert {k: float(v) for k, v in read.items()} == expected_rates(STEPS_PER_EPOCH)
    with pytest.raises(ValueError, match=r"received 1 optimizer_variables for MultiOptimizer"):
        introspect_opt.current_learning_rate(model, values[:1])


# --- LearningRateLogger, RateHistoryToTensorBoard --------------------------------


class BatchLogs(keras.callbacks.Callback):
    """Keeps every batch's logs, as a later callback (CSVLogger, TensorBoard) sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.rows.append(dict(logs or {}))


def test_logger_logs_every_sub_optimizer_every_step() -> None:
    """``<label>/learning_rate`` (and asked-for extras) for each sub-optimizer, every step."""
    model = compiled(make_multi())
    recorder = BatchLogs()
    logger = LearningRateLogger("batch", hyperparameters=("weight_decay",), diagnostics=True)
    history = fit(model, epochs=2, callbacks=[logger, recorder])
    assert len(recorder.rows) == 2 * STEPS_PER_EPOCH
    for update, logs in enumerate(recorder.rows, start=1):
        expected = expected_rates(update)
        assert logs["adam/learning_rate"] == expected["adam"]
        assert logs["sgd/learning_rate"] == expected["sgd"]
        for name in ("adam", "sgd"):
            assert logs[f"{name}/weight_decay"] == 0.0
            for quantity in ("gradient_norm", "update_norm", "update_to_weight_ratio"):
                assert np.isfinite(logs[f"{name}/{quantity}"]) and logs[f"{name}/{quantity}"] > 0
    assert history.history["adam/learning_rate"] == [
        expected_rates(n)["adam"] for n in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
    ]
    assert history.history["sgd/learning_rate"] == [expected_rates(1)["sgd"]] * 2
    # Hyperparameters are checked per sub-optimizer: SGD has no beta_1.
    with pytest.raises(ValueError, match=r"IntrospectableSGD 'sgd' \('sgd'\).*'beta_1'"):
        fit(model, callbacks=[LearningRateLogger(hyperparameters=("beta_1",))])


def test_rate_history_to_tensorboard_per_sub_optimizer(tmp_path: Path) -> None:
    """Every step's rate of each sub-optimizer reaches TensorBoard under its label."""
    pytest.importorskip("tensorboard")
    import tensorflow as tf

    model = compiled(make_multi())
    fit(model, epochs=2, callbacks=[RateHistoryToTensorBoard(tmp_path, interval=3)])
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, []).append((event.step, number))
    for name in ("adam", "sgd"):
        written = sorted(scalars[f"{name}/learning_rate"])
        assert written == [(n, expected_rates(n)[name]) for n in range(1, 9)]


# --- Errors ------------------------------------------------------------------------


def test_a_plain_sub_optimizer_is_named() -> None:
    """A plain sub-optimizer: TypeError naming it and introspect(multi_optimizer)."""
    multi = MultiOptimizer(
        OptimizerMap(keras.optimizers.SGD(0.01), {"first/.*": IntrospectableAdam()})
    )
    model = compiled(multi)
    message = (
        r"MultiOptimizer 'multi_optimizer' holds the plain Keras optimizer SGD 'sgd'.*"
        r"`introspect_opt\.introspect\(multi_optimizer\)` before training"
    )
    with pytest.raises(TypeError, match=message):
        introspect_opt.current_learning_rate(model)
    with pytest.raises(
        TypeError, match="LearningRateLogger cannot read this model's rate: " + message
    ):
        fit(model, callbacks=[LearningRateLogger()])


def test_two_sub_optimizers_with_one_label_are_refused() -> None:
    """Two unnamed Adams (``adam``, ``adam_1``) share a label: say to give distinct names."""
    multi = MultiOptimizer(OptimizerMap(IntrospectableAdam(), {"first/.*": IntrospectableAdam()}))
    model = compiled(multi)
    message = r"two sub-optimizers labelled 'adam'.*Give them distinct names \(`name=`"
    with pytest.raises(ValueError, match=message):
        introspect_opt.current_learning_rate(multi)
    with pytest.raises(ValueError, match=message):
        fit(model, callbacks=[LearningRateLogger()])
    named = MultiOptimizer(
        OptimizerMap(IntrospectableAdam(name="rest"), {"first/.*": IntrospectableAdam()})
    )
    assert sorted(rates(named)) == ["adam", "rest"]


# --- introspect(multi_optimizer) -----------------------------------------------------


def test_introspect_makes_each_sub_optimizer_introspectable(
    tmp_path: Path, uninterrupted: Any
) -> None:
    """In place, before training: bit-identical to plain, logged, and back from a file."""
    multi = make_multi(plain=True)
    assert introspect_opt.introspect(multi) is multi
    assert [type(o) for o in multi.optimizers] == [IntrospectableAdam, IntrospectableSGD]
    model = compiled(multi)
    history = fit(model, epochs=2, callbacks=[LearningRateLogger()])
    assert history.history["adam/learning_rate"][-1] == expected_rates(8)["adam"]
    assert rates(model) == expected_rates(8)
    assert_same_weights(model, uninterrupted)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert [type(o) for o in loaded.optimizer.optimizers] == [IntrospectableAdam, IntrospectableSGD]
    assert rates(loaded) == expected_rates(8)


def test_introspect_a_trained_multi_optimizer() -> None:
    """As for a single optimizer: derived rates until the next update, then cached ones."""
    model = compiled(make_multi(plain=True))
    fit(model)
    sync(model)
    introspect_opt.introspect(model.optimizer)
    assert rates(model) == expected_rates(STEPS_PER_EPOCH)
    model.compile(model.optimizer, loss="mse")  # retrace: the new update code
    fit(model)
    assert rates(model) == expected_rates(2 * STEPS_PER_EPOCH)


def test_introspect_a_multi_optimizer_with_a_selector_function() -> None:
    """A function chooses the sub-optimizers: unreachable before build, reachable after."""
    adam, sgd = keras.optimizers.Adam(STAIRS), keras.optimizers.SGD(0.01, momentum=0.9)
    multi = MultiOptimizer(lambda variable: adam if variable.path.startswith("first/") else sgd)
    with pytest.raises(ValueError, match=r"cannot reach the sub-optimizers.*before it is built"):
        introspect_opt.introspect(multi)
    with pytest.raises(ValueError, match=r"current_learning_rate\(\) cannot read.*yet"):
        introspect_opt.current_learning_rate(multi)
    model = compiled(multi)
    multi.build(model.trainable_variables)
    introspect_opt.introspect(multi)
    assert {type(o) for o in multi.optimizers} == {IntrospectableAdam, IntrospectableSGD}
    fit(model)
    assert rates(model) == expected_rates(STEPS_PER_EPOCH)


def test_introspect_still_refuses_a_loss_scale_optimizer() -> None:
    """Only the MultiOptimizer wrapper is opened; a LossScaleOptimizer still says what to pass."""
    with pytest.raises(TypeError, match=r"introspect\(optimizer\.inner_optimizer\)"):
        introspect_opt.introspect(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()))


# --- Files ---------------------------------------------------------------------------


def _save(model: Any, path: Path, kind: str) -> Any:
    if kind == "keras":
        model.save(path / "m.keras")
    elif kind == "weights":
        model.save_weights(path / "m.weights.h5")
    else:
        import tensorflow as tf

        return tf.train.Checkpoint(model=model, **sub_optimizers(model)).save(str(path / "ckpt"))
    return None


def sub_optimizers(model: Any) -> dict[str, Any]:
    """The sub-optimizers by label, as checkpoint dependencies of their own.

    Keras 3.15 does not track a MultiOptimizer's sub-optimizers for
    ``tf.train.Checkpoint`` (``test_keras_checkpoints_skip_sub_optimizers``);
    named beside the model, they are saved and restored.
    """
    return dict(zip(("adam", "sgd"), model.optimizer.optimizers, strict=True))


def _load(path: Path, kind: str, checkpoint: Any) -> Any:
    if kind == "keras":
        return keras.models.load_model(path / "m.keras")
    model = compiled(make_multi())
    if kind == "weights":
        model.optimizer.build(model.trainable_variables)
        model.load_weights(path / "m.weights.h5")
    else:
        import tensorflow as tf

        # Into optimizers that are not built yet: their state waits for build.
        tf.train.Checkpoint(model=model, **sub_optimizers(model)).restore(
            checkpoint
        ).assert_consumed()
    return model


@pytest.mark.parametrize(
    "kind", ["keras", "weights", pytest.param("checkpoint", marks=pytest.mark.tf_only)]
)
def test_files_round_trip(tmp_path: Path, kind: str, uninterrupted: Any) -> None:
    """Restored sub-optimizers hold the same applied rates and train on bit-identically."""
    model = compiled(make_multi())
    fit(model)
    saved = {name: bits(rate) for name, rate in introspect_opt.current_learning_rate(model).items()}
    restored = _load(tmp_path, kind, _save(model, tmp_path, kind))
    multi = restored.optimizer
    assert [type(o) for o in multi.optimizers] == [IntrospectableAdam, IntrospectableSGD]
    read = introspect_opt.current_learning_rate(restored)
    assert {name: bits(rate) for name, rate in read.items()} == saved
    fit(restored, callbacks=[LearningRateLogger()])
    sync(restored)
    assert int(keras.ops.convert_to_numpy(multi.iterations)) == 2 * STEPS_PER_EPOCH
    assert rates(restored) == expected_rates(2 * STEPS_PER_EPOCH)
    assert_same_weights(restored, uninterrupted)


@pytest.mark.tf_only
def test_keras_checkpoints_skip_sub_optimizers(tmp_path: Path) -> None:
    """Keras 3.15: tf.train.Checkpoint of a MultiOptimizer saves none of its sub-optimizers.

    Its ``_inner_optimizers`` reaches TensorFlow's tracking as an empty list,
    for plain and introspectable sub-optimizers alike. The docs say to name the
    sub-optimizers in the checkpoint; this fails when Keras starts saving them.
    """
    import tensorflow as tf

    for plain in (True, False):
        model = compiled(make_multi(plain=plain))
        fit(model)
        path = tf.train.Checkpoint(model=model).save(str(tmp_path / f"plain_{plain}"))
        names = [name for name, _ in tf.train.list_variables(path) if "/optimizer/" in name]
        assert names == [
            "model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",
            "model/optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE",
        ]
