"""LearningRateLogger: the applied rate in Keras's logs, CSV and TensorBoard."""

from __future__ import annotations

import csv
import glob
import itertools
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import make_data, make_model, schedule_value

import introspect_opt
from introspect_opt import IntrospectableSGD, LearningRateLogger, RateHistoryToTensorBoard

# The torch backend runs one step per call.
SPE = 1 if keras.backend.backend() == "torch" else None

# Exactly representable values, so expected rates compare bit for bit.
STAIRS = keras.optimizers.schedules.PiecewiseConstantDecay(
    [2, 5, 9, 14], [0.5, 0.25, 0.125, 0.0625, 0.03125]
)


class BatchLogs(keras.callbacks.Callback):
    """Keeps every batch's logs, as a later callback (CSVLogger, TensorBoard) sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, Any]]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.rows.append((iterations, dict(logs or {})))


def fit(model: Any, callbacks: list[Any], epochs: int = 2, **compile_kwargs: Any) -> Any:
    x, y = make_data(48)
    return model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks)


def compiled(learning_rate: Any = STAIRS, **kwargs: Any) -> Any:
    model = make_model()
    steps = SPE or kwargs.pop("steps_per_execution", 1)
    kwargs.pop("steps_per_execution", None)
    jit = kwargs.pop("jit_compile", "auto")
    model.compile(
        IntrospectableSGD(learning_rate, **kwargs),
        loss="mse",
        steps_per_execution=steps,
        jit_compile=jit,
    )
    return model


def test_epoch_logs_reach_history_and_csv(tmp_path: Path) -> None:
    """Epoch logs, History and CSVLogger get the rate the epoch's last update applied."""
    model = compiled(momentum=0.9)
    csv_path = tmp_path / "log.csv"
    logger = LearningRateLogger(hyperparameters=("momentum", "weight_decay"))
    history = fit(model, [logger, keras.callbacks.CSVLogger(str(csv_path))], epochs=3)
    # 6 steps per epoch: the last updates of the epochs applied s(5), s(11), s(17).
    expected = [float(schedule_value(STAIRS, s)) for s in (5, 11, 17)]
    assert history.history["sgd/learning_rate"] == expected
    assert history.history["sgd/momentum"] == [0.9] * 3
    assert history.history["sgd/weight_decay"] == [0.0] * 3
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["sgd/learning_rate"]) for r in rows] == expected


@pytest.mark.parametrize("interval", ["batch", 3])
def test_batch_logs_with_steps_per_execution(interval: Any) -> None:
    """Batch logs get the rate of the last update of each read, also in blocks of steps."""
    model = compiled(steps_per_execution=2)
    recorder = BatchLogs()
    fit(model, [LearningRateLogger(interval), recorder])
    logged = [
        (it, logs["sgd/learning_rate"]) for it, logs in recorder.rows if "sgd/learning_rate" in logs
    ]
    reads = [it for it, _ in logged]
    if SPE == 1:
        assert reads == (list(range(1, 13)) if interval == "batch" else [3, 6, 9, 12])
    elif interval == "batch":
        assert reads == list(range(2, 13, 2))  # every block of 2 steps
    else:
        # Every 3 steps, read at the end of the block that crossed the mark.
        assert reads == [4, 6, 10, 12]
    for iterations, value in logged:
        assert value == float(schedule_value(STAIRS, iterations - 1))


def _event_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``log_dir``, by tag."""
    import tensorflow as tf

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in glob.glob(str(log_dir / "**" / "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tf.make_ndarray(value.tensor))
                    scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


def test_every_step_reaches_tensorboard_with_steps_per_execution_32(tmp_path: Path) -> None:
    """With steps_per_execution=32 every update's rate lands in TensorBoard at its own step."""
    model = compiled(steps_per_execution=32)
    x, y = make_data(64 * 8)
    board = RateHistoryToTensorBoard(tmp_path, interval="batch")
    keras_tb = keras.callbacks.TensorBoard(log_dir=str(tmp_path))
    model.fit(
        x, y, batch_size=8, epochs=2, verbose=0, callbacks=[LearningRateLogger(), board, keras_tb]
    )
    scalars = _event_scalars(tmp_path)
    steps = sorted(scalars["sgd/learning_rate"])
    assert [s for s, _ in steps] == list(range(1, 129))  # each update exactly once
    assert all(v == float(schedule_value(STAIRS, s - 1)) for s, v in steps)
    # Keras's own TensorBoard callback sees the key too (epoch-level).
    assert [v for _, v in sorted(scalars["epoch_sgd/learning_rate"])] == [
        float(schedule_value(STAIRS, 63)),
        float(schedule_value(STAIRS, 127)),
    ]


def test_history_too_small_warns_and_logs_what_it_has(tmp_path: Path) -> None:
    """A buffer smaller than the steps between reads says so, and loses nothing else."""
    model = compiled()
    # Read every 8 steps, i.e. only at the end of the 6-step epoch.
    logger = RateHistoryToTensorBoard(tmp_path, interval=8, history_size=4)
    with pytest.warns(UserWarning, match="history_size"):
        fit(model, [logger], epochs=1)
    steps = [s for s, _ in _event_scalars(tmp_path)["sgd/learning_rate"]]
    # 6 updates between reads: the buffer of 4 holds updates 3-6.
    assert steps == [3, 4, 5, 6]


def test_mixed_precision_keys_and_skipped_steps() -> None:
    """Under a LossScaleOptimizer keys are the inner optimizer's; skipped steps are counted."""
    keras.config.set_dtype_policy("mixed_float16")
    model = compiled(learning_rate=0.01)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = make_data(48)
    x[8:16] = np.inf  # the second batch has non-finite gradients: that step is skipped
    recorder = BatchLogs()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[LearningRateLogger("batch", diagnostics=True), recorder],
    )
    # Ground truth: a step was skipped when the step counter did not move.
    counts = [0] + [it for it, _ in recorder.rows]
    truth = [float(after == before) for before, after in itertools.pairwise(counts)]
    assert truth[1] == 1.0  # the non-finite batch (others may overflow float16 too)
    assert [logs["sgd/skipped_steps"] for _, logs in recorder.rows] == truth
    assert all(logs["sgd/learning_rate"] == np.float32(0.01) for _, logs in recorder.rows)
    assert np.isfinite(recorder.rows[-1][1]["sgd/gradient_norm"])


def test_several_optimizers_get_distinct_keys() -> None:
    """Given labels are used as they are, one key per optimizer."""
    model = compiled()
    model.fit(*make_data(16), batch_size=8, epochs=1, verbose=0)
    other = IntrospectableSGD(0.5, name="sgd")
    other.build(model.trainable_variables)
    logs: dict[str, Any] = {}
    logger = LearningRateLogger(optimizers={"generator": model.optimizer, "critic": other})
    logger.set_model(model)
    logger.on_train_begin()
    logger.on_epoch_end(0, logs)
    assert set(logs) == {"generator/learning_rate", "critic/learning_rate"}
    assert logs["critic/learning_rate"] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": "step"}, 'interval must be "epoch", "batch", a positive int N'),
        ({"interval": 0}, "received 0"),
        ({"interval": True}, "received True"),
        ({"hyperparameters": ("learning_rate",)}, "other than learning_rate"),
        ({"diagnostics": "yes"}, "diagnostics must be True or False"),
        ({"optimizers": {}}, "non-empty dict"),
    ],
)
def test_bad_arguments_are_refused_in_init(kwargs: dict[str, Any], message: str) -> None:
    """Invalid arguments fail in __init__ with what was received and what is valid."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        LearningRateLogger(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"log_dir": ""}, "log_dir must be a directory path"),
        ({"log_dir": "x", "history_size": 0}, "history_size must be a positive int"),
        ({"log_dir": "x", "interval": "step"}, "interval must be"),
        ({"log_dir": "x", "optimizers": {"g": keras.optimizers.Adam()}}, "introspectable"),
    ],
)
def test_bad_tensorboard_arguments_are_refused_in_init(
    kwargs: dict[str, Any], message: str
) -> None:
    """RateHistoryToTensorBoard checks its arguments in __init__."""
    with pytest.raises((ValueError, TypeError), match=message):
        RateHistoryToTensorBoard(**kwargs)


def test_moved_arguments_say_where_they_went() -> None:
    """every_step/log_dir/history_size of 0.1 name the callback that has them now."""
    with pytest.raises(TypeError, match=r"every_step, log_dir.*RateHistoryToTensorBoard"):
        LearningRateLogger("batch", every_step=True, log_dir="logs")  # type: ignore[call-arg]


def test_unknown_hyperparameter_lists_valid_names() -> None:
    """A hyperparameter the optimizer lacks fails at the start of fit, listing valid ones."""
    model = compiled()
    with pytest.raises(
        ValueError, match=r"no scalar hyperparameter \['beta_1'\]; valid names .*'momentum'"
    ):
        fit(model, [LearningRateLogger(hyperparameters="beta_1")], epochs=1)


def test_plain_optimizer_fails_at_train_begin_with_the_fix() -> None:
    """A plain Keras optimizer: one clear error at on_train_begin naming the fix."""
    model = make_model()
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(
        TypeError, match=r"LearningRateLogger .*introspect_opt.introspect\(optimizer\)"
    ):
        fit(model, [LearningRateLogger()], epochs=1)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))


def test_rate_history_reader_through_a_model() -> None:
    """rate_history(model) reads every recent update's rate, on every backend."""
    model = compiled(steps_per_execution=4)
    introspect_opt.keep_rate_history(model.optimizer, 16)
    fit(model, [], epochs=1)
    steps, rates = introspect_opt.rate_history(model)
    assert steps.tolist() == list(range(1, 7))
    assert rates.tolist() == [float(schedule_value(STAIRS, s - 1)) for s in range(1, 7)]


def test_a_later_fit_that_reads_less_often_grows_the_buffer(tmp_path: Path) -> None:
    """A second fit with a longer read interval resizes the history; no update is lost."""
    model = compiled(steps_per_execution=2)
    fit(model, [RateHistoryToTensorBoard(tmp_path, interval="batch")], epochs=1)
    logger = RateHistoryToTensorBoard(tmp_path, interval=6)
    fit(model, [logger], epochs=2)
    steps = sorted(s for s, _ in _event_scalars(tmp_path)["sgd/learning_rate"])
    assert steps == list(range(1, 19))  # 6 + 12 updates, each once


def test_interval_not_a_multiple_of_steps_per_execution_loses_nothing(tmp_path: Path) -> None:
    """The default history covers the widest gap between reads (N + spe - 1 steps)."""
    model = compiled(steps_per_execution=4)
    logger = RateHistoryToTensorBoard(tmp_path, interval=6)
    fit(model, [logger], epochs=2)
    steps = sorted(s for s, _ in _event_scalars(tmp_path)["sgd/learning_rate"])
    assert steps == list(range(1, 13))


def test_epoch_logs_count_skipped_steps_over_the_epoch() -> None:
    """With batch reads, epoch logs still count every skipped step of the epoch."""
    keras.config.set_dtype_policy("mixed_float16")
    model = compiled(learning_rate=0.01)
    x, y = make_data(48)
    x[8:24] = np.inf  # batches 2 and 3 cannot update
    recorder = BatchLogs()
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[LearningRateLogger("batch", diagnostics=True), recorder],
    )
    per_batch = sum(logs["sgd/skipped_steps"] for _, logs in recorder.rows)
    updates = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert history.history["sgd/skipped_steps"] == [float(6 - updates)] == [per_batch]
    assert per_batch >= 2


def test_tensorboard_gets_each_rate_once_per_step(tmp_path: Path) -> None:
    """An epoch's end reads the step its last batch read: each rate is written once."""
    model = compiled()
    fit(model, [RateHistoryToTensorBoard(tmp_path, interval=3)], epochs=2)
    steps = [s for s, _ in _event_scalars(tmp_path)["sgd/learning_rate"]]
    assert steps == list(range(1, 13))


def test_keras_tensorboard_writes_the_logged_keys_per_batch(tmp_path: Path) -> None:
    """Keras's TensorBoard(update_freq=N) writes the logger's batch-level keys."""
    model = compiled()
    logger = LearningRateLogger(3, hyperparameters="momentum")
    board = keras.callbacks.TensorBoard(log_dir=str(tmp_path), update_freq=3)
    fit(model, [logger, board], epochs=1)
    scalars = _event_scalars(tmp_path)
    rates = [v for _, v in sorted(scalars["batch_sgd/learning_rate"])]
    assert rates and all(r in {float(schedule_value(STAIRS, s)) for s in range(6)} for r in rates)


def test_labels_keep_names_users_chose() -> None:
    """A name you gave is the label as it is; Keras's counter on default names is dropped."""
    from introspect_opt._callbacks.logger import label

    assert label(introspect_opt.IntrospectableAdam(name="adam_2")) == "adam_2"
    introspect_opt.IntrospectableAdam()
    assert introspect_opt.IntrospectableAdam().name == "adam_1"
    assert label(introspect_opt.IntrospectableAdam()) == "adam"
    assert label(introspect_opt.introspect(keras.optimizers.Adam())) == "adam"


def test_numpy_numbers_and_none_are_accepted() -> None:
    """NumPy integers work as intervals and sizes; hyperparameters=None means none."""
    logger = LearningRateLogger(np.int64(5), hyperparameters=None)
    assert logger.interval == 5 and logger.hyperparameters == ()
    plateau = introspect_opt.ScaleLearningRateOnPlateau(
        factor=np.float32(0.5), patience=np.int64(3)
    )
    assert plateau.patience == 3


def test_optimizers_are_checked_in_init() -> None:
    """A value in optimizers that is not introspectable fails at once, naming the fix."""
    with pytest.raises(TypeError, match=r"optimizers\['g'\] must be an introspectable optimizer"):
        LearningRateLogger(optimizers={"g": keras.optimizers.Adam()})


def test_epoch_reads_cover_blocks_that_run_past_the_declared_epoch(tmp_path: Path) -> None:
    """Keras runs whole blocks of steps: the default history covers them, nothing lost."""
    model = compiled(steps_per_execution=4)
    x, y = make_data(8 * 40)
    logger = RateHistoryToTensorBoard(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.fit(x, y, batch_size=8, steps_per_epoch=6, epochs=2, verbose=0, callbacks=[logger])
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    steps = sorted(s for s, _ in _event_scalars(tmp_path)["sgd/learning_rate"])
    assert steps == list(range(1, iterations + 1))
