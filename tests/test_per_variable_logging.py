"""Per-variable diagnostics where users look: ``fit``'s logs and TensorBoard.

docs/logging.md, "Per-variable diagnostics": ``LearningRateLogger(diagnostics=
"per_variable")`` (History, CSVLogger, batch logs) and ``DiagnosticsToTensorBoard``
(scalars per variable, histograms over variables, each update once per directory).
"""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import make_data, make_model, schedule_value, sync

import introspect_opt
from introspect_opt import (
    DiagnosticsToTensorBoard,
    IntrospectableAdam,
    IntrospectableSGD,
    LearningRateLogger,
)

BACKEND = keras.backend.backend()
pytest.importorskip("tensorboard")

# Exactly representable rates, small enough for the MLP of helpers.make_model.
STAIRS = keras.optimizers.schedules.PiecewiseConstantDecay([4, 8], [2.0**-4, 2.0**-5, 2.0**-6])
QUANTITIES = (
    "gradient_norm",
    "update_norm",
    "weight_norm",
    "update_to_weight_ratio",
    "effective_learning_rate",
)
SPREAD_KEYS = [
    f"{quantity}/{summary}"
    for quantity in ("update_to_weight_ratio", "effective_learning_rate")
    for summary in ("min", "median", "max")
]
STEPS_PER_EPOCH = 6  # make_data(48), batch_size=8


def rate_rtol(ratio: float) -> float:
    """How close an effective rate is to plain SGD's rate: "to float32 rounding".

    The update is measured as the difference of two float32 weights, each
    exact to half an ulp (2**-24 relative), so its norm is exact to about
    2**-24 / update_to_weight_ratio relative (seen: 4.4e-5 at a ratio of 1e-3);
    a factor 4 and a few ulps of the reductions on top.
    """
    return 2.0**-22 / ratio + 2.0**-20


def named_model(seed: int = 0) -> Any:
    """helpers.make_model's MLP with names of its own: the same variable paths in every model.

    (Keras numbers default names per process: the second unnamed model's
    kernel is ``sequential_1/dense_2/kernel``, and tags follow the paths.)
    """
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(1, name="out"),
        ],
        name="mlp",
    )


def compiled(optimizer: Any, steps_per_execution: int = 1, seed: int = 0) -> Any:
    model = named_model(seed)
    model.compile(optimizer, loss="mse", steps_per_execution=steps_per_execution)
    return model


def fit(model: Any, callbacks: list[Any], epochs: int = 2) -> Any:
    x, y = make_data(8 * STEPS_PER_EPOCH)
    return model.fit(
        x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks
    )


def iterations(model: Any) -> int:
    return int(keras.ops.convert_to_numpy(sync(model).iterations))


def events(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, Any]]:
    """(scalars, histograms) of every TensorBoard event file under ``log_dir``, by tag.

    Histograms are ``[(step, buckets)]`` with ``buckets`` rows of (left, right, count).
    """
    return events_of(glob.glob(str(log_dir / "**" / "events.out.tfevents.*"), recursive=True))


def events_of(paths: list[str]) -> tuple[dict[str, list[tuple[int, float]]], dict[str, Any]]:
    """As ``events``, for the event files ``paths``."""
    import tensorflow as tf

    scalars: dict[str, list[tuple[int, float]]] = {}
    histograms: dict[str, list[tuple[int, np.ndarray]]] = {}
    for path in sorted(paths):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                array = tf.make_ndarray(value.tensor)
                if plugin == "scalars":
                    scalars.setdefault(value.tag, []).append((event.step, float(array)))
                elif plugin == "histograms":
                    histograms.setdefault(value.tag, []).append((event.step, array))
    return scalars, histograms


def steps_of(written: list[tuple[int, Any]]) -> list[int]:
    return sorted(step for step, _ in written)


class Recorder(keras.callbacks.Callback):
    """Keeps, after each batch: the batch logs, the per-variable read, and the weights.

    Placed after the callbacks under test, it sees the logs they wrote; the
    weights give an oracle computed on the host, independently of the device's.
    """

    def __init__(self, per_variable: bool = True) -> None:
        super().__init__()
        self.per_variable = per_variable  # a MultiOptimizer's are read per sub-optimizer
        self.logs: dict[int, dict[str, Any]] = {}
        self.rows: dict[int, dict[str, dict[str, float]]] = {}
        self.weights: dict[int, dict[str, np.ndarray]] = {}

    def _weights(self) -> dict[str, np.ndarray]:
        sync(self.model)
        return {
            v.path: np.array(keras.ops.convert_to_numpy(v), dtype=np.float64)
            for v in self.model.trainable_variables
        }

    def on_train_begin(self, logs: Any = None) -> None:
        self.weights[iterations(self.model)] = self._weights()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        done = iterations(self.model)
        self.logs[done] = dict(logs or {})
        if self.per_variable:
            rows = introspect_opt.last_update_diagnostics(self.model, per_variable=True)
            self.rows[done] = rows
        self.weights[done] = self._weights()

    def ratios(self, update: int) -> list[float]:
        """Each variable's ||after - before|| / ||before|| for ``update``, from the weights."""
        before, after = self.weights[update - 1], self.weights[update]
        with np.errstate(divide="ignore", invalid="ignore"):
            return [
                float(np.linalg.norm(after[p] - before[p]) / np.linalg.norm(before[p]))
                for p in before
            ]


# --- LearningRateLogger(diagnostics="per_variable") ---------------------------------


def test_spread_over_variables_reaches_batch_logs_history_and_csv(tmp_path: Path) -> None:
    """docs/logging.md, "Per-variable diagnostics": min/median/max in fit's logs, global keys too.

    Plain SGD without momentum: every variable's effective learning rate is the
    applied rate (float32 rounding), so min == median == max == the rate. The
    update-to-weight ratios match the weights' own change, computed on the host.
    """
    model = compiled(IntrospectableSGD(STAIRS))
    recorder = Recorder()
    csv_path = tmp_path / "log.csv"
    logger = LearningRateLogger("batch", diagnostics="per_variable")
    csv_logger = keras.callbacks.CSVLogger(str(csv_path))
    board = keras.callbacks.TensorBoard(str(tmp_path / "keras"))
    history = fit(model, [logger, recorder, csv_logger, board])
    assert sorted(recorder.logs) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for update, logs in recorder.logs.items():
        rate = float(schedule_value(STAIRS, update - 1))
        assert logs["sgd/learning_rate"] == rate
        for key in ("gradient_norm", "update_norm", "update_to_weight_ratio"):
            assert np.isfinite(logs[f"sgd/{key}"]), key  # the global keys stay
        spread = [logs[f"sgd/effective_learning_rate/{s}"] for s in ("min", "median", "max")]
        ratios = recorder.ratios(update)
        np.testing.assert_allclose(spread, [rate] * 3, rtol=rate_rtol(min(ratios)))
        expected = [np.min(ratios), np.median(ratios), np.max(ratios)]
        got = [logs[f"sgd/update_to_weight_ratio/{s}"] for s in ("min", "median", "max")]
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Update 1: the biases start at zero, so their ratio (and the maximum) is inf.
    assert recorder.logs[1]["sgd/update_to_weight_ratio/max"] == np.inf
    # Epoch logs: the values of each epoch's last update, in History and CSVLogger.
    ends = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    with csv_path.open() as file:
        rows = list(csv.DictReader(file))
    scalars, _ = events(tmp_path / "keras")
    for key in SPREAD_KEYS:
        assert history.history[f"sgd/{key}"] == [recorder.logs[n][f"sgd/{key}"] for n in ends]
        assert [float(row[f"sgd/{key}"]) for row in rows] == history.history[f"sgd/{key}"]
        # Keras's TensorBoard callback: the epoch scalars, as float32.
        epochs = [value for _, value in sorted(scalars[f"epoch_sgd/{key}"])]
        assert epochs == [float(np.float32(v)) for v in history.history[f"sgd/{key}"]]


def test_variables_without_a_value_are_left_out_and_none_left_is_nan(tmp_path: Path) -> None:
    """docs/logging.md: nan values (not updated, zero gradient) leave the spread; none left: nan.

    In TensorBoard they get no point, and the histograms hold the finite values.
    """
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, name="a"), keras.layers.Dense(1, name="b")]
    )
    optimizer = IntrospectableSGD(0.5)
    model.compile(optimizer, loss="mse")
    optimizer.build(model.trainable_variables)
    (a_kernel, a_bias), (b_kernel, b_bias) = (layer.trainable_variables for layer in model.layers)
    a_kernel.assign(np.full((3, 2), 0.5, "float32"))
    b_kernel.assign(np.full((2, 1), 1.0, "float32"))
    # Driven by hand, the way fit drives it, around steps of a custom loop.
    logger = LearningRateLogger("batch", diagnostics="per_variable")
    board = DiagnosticsToTensorBoard(tmp_path)
    for callback in (logger, board):
        callback.set_model(model)
        callback.on_train_begin()
        callback.on_epoch_begin(0)
    optimizer.apply_gradients(
        [
            (keras.ops.ones((3, 2)), a_kernel),  # ratio 0.5 * 1 / 0.5 = 1, rate 0.5
            (keras.ops.zeros((2,)), a_bias),  # zero gradient on zero weights: nan, nan
            (keras.ops.ones((2, 1)), b_kernel),  # ratio 0.5 * 1 / 1 = 0.5, rate 0.5
        ]  # b_bias: not updated, nan
    )
    logs: dict[str, Any] = {}
    logger.on_train_batch_end(0, logs)
    board.on_train_batch_end(0)
    rows = introspect_opt.last_update_diagnostics(model, per_variable=True)
    assert np.isnan(rows[a_bias.path]["effective_learning_rate"])
    assert np.isnan(rows[b_bias.path]["update_to_weight_ratio"])
    assert [logs[f"sgd/update_to_weight_ratio/{s}"] for s in ("min", "median", "max")] == [
        0.5,
        0.75,
        1.0,
    ]
    assert [logs[f"sgd/effective_learning_rate/{s}"] for s in ("min", "median", "max")] == [0.5] * 3
    optimizer.apply_gradients([(keras.ops.zeros((2,)), a_bias)])  # no variable gets a value
    logs = {}
    logger.on_train_batch_end(1, logs)
    board.on_train_batch_end(1)
    board.on_train_end()
    assert logs["sgd/learning_rate"] == 0.5
    assert all(np.isnan(logs[f"sgd/{key}"]) for key in SPREAD_KEYS)
    scalars, histograms = events(tmp_path)
    assert {tag: steps_of(written) for tag, written in scalars.items()} == {
        **{f"sgd/{a_kernel.path}/{q}": [1] for q in QUANTITIES},
        **{f"sgd/{b_kernel.path}/{q}": [1] for q in QUANTITIES},
        # Zero gradient on zero weights: the norms (0.0) at both updates, no ratio, no rate.
        **{f"sgd/{a_bias.path}/{q}": [1, 2] for q in QUANTITIES[:3]},
    }
    ratios = dict(histograms["sgd/update_to_weight_ratio"])
    assert sorted(ratios) == [1, 2]
    assert ratios[1][:, 2].sum() == 2  # a_kernel's 1.0 and b_kernel's 0.5
    assert ratios[1][:, 0].min() == 0.5 and ratios[1][:, 1].max() == 1.0
    assert ratios[2][:, 2].sum() == 0  # no finite value at update 2


def test_adam_effective_rate_shows_its_adaptive_scaling_bias_correction_included() -> None:
    """docs/logging.md: for Adam, the rate times the per-layer adaptive scaling.

    Adam's first update, bias-corrected, moves each weight by about the rate
    (m / sqrt(v) = g / |g|): its norm is lr * sqrt(n), so the effective rate
    of a gradient g is lr * sqrt(n) / |g|. Without the bias correction it
    would be (1 - beta_1) / sqrt(1 - beta_2) = 3.16 times that.
    """
    optimizer = IntrospectableAdam(0.1)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    model.compile(optimizer, loss="mse")
    kernel, bias = model.trainable_variables
    logger = LearningRateLogger("batch", diagnostics="per_variable")
    logger.set_model(model)
    logger.on_train_begin()
    logger.on_epoch_begin(0)
    optimizer.apply_gradients(
        [(keras.ops.convert_to_tensor([[3.0], [-4.0]]), kernel), (keras.ops.ones((1,)), bias)]
    )
    logs: dict[str, Any] = {}
    logger.on_train_batch_end(0, logs)
    rows = introspect_opt.last_update_diagnostics(optimizer, per_variable=True)
    assert rows[kernel.path]["effective_learning_rate"] == pytest.approx(0.1 * 2**0.5 / 5, 1e-5)
    assert rows[bias.path]["effective_learning_rate"] == pytest.approx(0.1, 1e-5)
    assert logs["adam/effective_learning_rate/min"] == pytest.approx(0.1 * 2**0.5 / 5, 1e-5)
    assert logs["adam/effective_learning_rate/max"] == pytest.approx(0.1, 1e-5)


@pytest.mark.parametrize(
    "value", ["per-variable", "yes", 1, None, ("per_variable",)], ids=lambda v: repr(v)
)
def test_a_bad_diagnostics_value_says_what_it_got_and_what_is_allowed(value: Any) -> None:
    """docs/logging.md: anything but True, False or "per_variable" is a ValueError in __init__."""
    with pytest.raises(ValueError) as raised:
        LearningRateLogger(diagnostics=value)
    message = str(raised.value)
    assert message.startswith(
        "diagnostics must be True or False, or 'per_variable' for per-variable diagnostics too"
    )
    assert message.endswith(f"received {value!r}.")


def test_numpy_booleans_are_accepted() -> None:
    """A NumPy bool works as diagnostics=True/False."""
    model = compiled(IntrospectableSGD(0.1))
    history = fit(model, [LearningRateLogger(diagnostics=np.True_)], epochs=1)
    assert "sgd/update_norm" in history.history
    assert "sgd/update_to_weight_ratio/min" not in history.history


# --- DiagnosticsToTensorBoard ---------------------------------------------------------


def test_tensorboard_gets_each_variable_and_histograms_at_every_update(tmp_path: Path) -> None:
    """docs/logging.md: scalars <label>/<path>/<quantity> and two histograms, at each update.

    interval="batch" with one step per call: every update, once, at its number,
    with the values last_update_diagnostics reads; plain SGD's effective rate
    is the applied rate.
    """
    model = compiled(IntrospectableSGD(STAIRS))
    recorder = Recorder()
    fit(model, [DiagnosticsToTensorBoard(tmp_path), recorder])
    updates = list(range(1, 2 * STEPS_PER_EPOCH + 1))
    scalars, histograms = events(tmp_path)
    paths = [v.path for v in model.trainable_variables]
    assert set(scalars) == {f"sgd/{p}/{q}" for p in paths for q in QUANTITIES}
    assert set(histograms) == {"sgd/update_to_weight_ratio", "sgd/effective_learning_rate"}
    for path in paths:
        for quantity in QUANTITIES:
            written = dict(scalars[f"sgd/{path}/{quantity}"])
            assert steps_of(scalars[f"sgd/{path}/{quantity}"]) == updates
            read = [np.float32(recorder.rows[n][path][quantity]) for n in updates]
            assert [written[n] for n in updates] == read, (path, quantity)
        rates = dict(scalars[f"sgd/{path}/effective_learning_rate"])
        for n in updates:
            ratio = recorder.rows[n][path]["update_to_weight_ratio"]
            rate = float(schedule_value(STAIRS, n - 1))
            assert rates[n] == pytest.approx(rate, rel=rate_rtol(ratio)), (path, n)
    for quantity in ("update_to_weight_ratio", "effective_learning_rate"):
        written_histograms = histograms[f"sgd/{quantity}"]
        assert steps_of(written_histograms) == updates
        for update, buckets in written_histograms:
            values = [recorder.rows[update][p][quantity] for p in paths]
            finite = np.array([v for v in values if np.isfinite(v)], np.float32)
            assert buckets[:, 2].sum() == finite.size
            assert buckets[:, 0].min() == pytest.approx(finite.min(), rel=1e-6)
            assert buckets[:, 1].max() == pytest.approx(finite.max(), rel=1e-6)
    # Update 1: the zero-initialized biases have an infinite ratio, out of the histogram.
    first = dict(histograms["sgd/update_to_weight_ratio"])[1]
    assert first[:, 2].sum() == 2


@pytest.mark.skipif(BACKEND == "torch", reason="Keras refuses steps_per_execution > 1 on torch")
def test_with_steps_per_execution_the_last_update_of_each_block(tmp_path: Path) -> None:
    """docs/logging.md: the device keeps the last update only; spe=3 writes every 3rd."""
    model = compiled(IntrospectableSGD(STAIRS), steps_per_execution=3)
    fit(model, [DiagnosticsToTensorBoard(tmp_path)])
    scalars, histograms = events(tmp_path)
    assert steps_of(histograms["sgd/effective_learning_rate"]) == [3, 6, 9, 12]
    kernel = model.trainable_variables[0].path
    assert steps_of(scalars[f"sgd/{kernel}/update_norm"]) == [3, 6, 9, 12]


@pytest.mark.parametrize(
    ("interval", "written"), [(4, [4, 6, 8, 12, 16, 18]), ("epoch", [6, 12, 18])]
)
def test_a_read_without_a_new_update_writes_nothing(
    tmp_path: Path, interval: Any, written: list[int]
) -> None:
    """docs/logging.md: interval=4 reads at 4, 8, 12 and the epoch ends (6, 12): 12 once.

    interval="epoch": the last update of each epoch. A later fit with the same
    callback goes on from the next update.
    """
    model = compiled(IntrospectableSGD(0.01))
    board = DiagnosticsToTensorBoard(tmp_path, interval=interval)
    fit(model, [board])
    fit(model, [board], epochs=1)
    _, histograms = events(tmp_path)
    assert steps_of(histograms["sgd/update_to_weight_ratio"]) == written


class Crash(Exception):
    """Stands in for a pre-empted machine."""


class CrashAt(keras.callbacks.Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.epoch, self.batch, self.current_epoch = epoch, batch, 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.current_epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if (self.current_epoch, batch) == (self.epoch, self.batch):
            raise Crash(f"pre-empted at epoch {self.epoch} batch {batch}")


def _backed_up_run(log_dir: Path, backup_dir: Path, after: tuple[Any, ...] = ()) -> Any:
    """A fresh model trained 3 epochs of 6 steps, a new callback before BackupAndRestore."""
    model = compiled(IntrospectableSGD(STAIRS))
    backup = keras.callbacks.BackupAndRestore(str(backup_dir))
    fit(model, [DiagnosticsToTensorBoard(log_dir), backup, *after], epochs=3)
    return model


def test_a_resumed_run_writes_no_update_twice(tmp_path: Path) -> None:
    """docs/logging.md: after BackupAndRestore resumes, updates already in the files are skipped.

    The crashed run wrote updates 1-15 (12 backed up); the resumed one, a new
    callback as in a new process, replays 13-18 and writes 16-18 only, with no
    warning.
    """
    logs, backup = tmp_path / "logs", tmp_path / "backup"
    with pytest.raises(Crash):
        _backed_up_run(logs, backup, after=(CrashAt(2, 3),))
    _, histograms = events(logs)
    assert steps_of(histograms["sgd/update_to_weight_ratio"]) == list(range(1, 16))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="DiagnosticsToTensorBoard")
        model = _backed_up_run(logs, backup)
    assert iterations(model) == 18
    scalars, histograms = events(logs)
    assert steps_of(histograms["sgd/update_to_weight_ratio"]) == list(range(1, 19))
    for tag, written in scalars.items():
        assert steps_of(written) == list(range(1, 19)), tag


def test_an_event_file_cut_short_is_read_up_to_the_cut(tmp_path: Path) -> None:
    """An interrupted write leaves a record cut short: the scan stops there, the run goes on."""
    model = compiled(IntrospectableSGD(0.01))
    fit(model, [DiagnosticsToTensorBoard(tmp_path)], epochs=1)
    (path,) = glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) - 5)
    fit(model, [DiagnosticsToTensorBoard(tmp_path)], epochs=1)
    (later,) = set(glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))) - {path}
    _, histograms = events_of([later])
    assert steps_of(histograms["sgd/update_to_weight_ratio"]) == list(range(7, 13))


def test_a_new_run_in_an_old_directory_warns_and_writes_its_own(tmp_path: Path) -> None:
    """docs/logging.md: a new optimizer on a directory with another run's updates: a warning.

    The new run writes its own updates at the same numbers, and goes on after
    them in a later fit (the other run's 12 updates hold nothing back).
    """
    fit(compiled(IntrospectableSGD(0.01)), [DiagnosticsToTensorBoard(tmp_path)], epochs=2)
    model, board = compiled(IntrospectableSGD(0.02), seed=1), DiagnosticsToTensorBoard(tmp_path)
    with pytest.warns(UserWarning, match=r"already holds the diagnostics of 'sgd' up to update 12"):
        fit(model, [board], epochs=1)
    fit(model, [board], epochs=1)
    _, histograms = events(tmp_path)
    written = histograms["sgd/effective_learning_rate"]
    by_rate: dict[float, list[int]] = {}
    for step, buckets in written:
        by_rate.setdefault(round(float(buckets[:, 0].min()), 6), []).append(step)
    assert {rate: sorted(steps) for rate, steps in by_rate.items()} == {
        0.01: list(range(1, 13)),
        0.02: list(range(1, 13)),
    }


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"log_dir": ""}, ValueError, r"log_dir must be a directory path .*received ''"),
        ({"log_dir": None}, ValueError, r"log_dir must be a directory path .*received None"),
        ({"log_dir": "x", "interval": "step"}, ValueError, "interval must be"),
        ({"log_dir": "x", "interval": 0}, ValueError, "received 0"),
        (
            {"log_dir": "x", "optimizers": {"g": keras.optimizers.Adam()}},
            TypeError,
            r"optimizers\['g'\] must be an introspectable optimizer",
        ),
    ],
)
def test_bad_tensorboard_arguments_are_refused_in_init(
    kwargs: dict[str, Any], error: type, message: str
) -> None:
    """DiagnosticsToTensorBoard checks its arguments in __init__, as the other callbacks do."""
    with pytest.raises(error, match=message):
        DiagnosticsToTensorBoard(**kwargs)


def test_plain_optimizer_fails_at_train_begin(tmp_path: Path) -> None:
    """A model whose optimizer is not introspectable fails before any step, naming the fix."""
    model = make_model()
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    with pytest.raises(TypeError, match=r"DiagnosticsToTensorBoard cannot read.*introspect"):
        fit(model, [DiagnosticsToTensorBoard(tmp_path)], epochs=1)
    assert iterations(model) == 0


# --- MultiOptimizer ------------------------------------------------------------------


def test_multi_optimizer_each_sub_optimizer_under_its_label(tmp_path: Path) -> None:
    """docs/logging.md: adam/... and sgd/... keys in the logs, tags and histograms per label."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(4, name="first")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="second")(hidden))
    multi = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(
            IntrospectableSGD(2.0**-6), {"first/.*": IntrospectableAdam(1e-3)}
        )
    )
    model.compile(multi, loss="mse")
    recorder = Recorder(per_variable=False)
    logger = LearningRateLogger("batch", diagnostics="per_variable")
    fit(model, [logger, DiagnosticsToTensorBoard(tmp_path), recorder])
    for logs in recorder.logs.values():
        for name in ("adam", "sgd"):
            assert not any(np.isnan(logs[f"{name}/{key}"]) for key in SPREAD_KEYS)
        # SGD without momentum: its variables' effective rate is its rate.
        rtol = rate_rtol(logs["sgd/update_to_weight_ratio/min"])
        for summary in ("min", "median", "max"):
            assert logs[f"sgd/effective_learning_rate/{summary}"] == pytest.approx(
                2.0**-6, rel=rtol
            )
    scalars, histograms = events(tmp_path)
    assert set(histograms) == {
        f"{name}/{quantity}"
        for name in ("adam", "sgd")
        for quantity in ("update_to_weight_ratio", "effective_learning_rate")
    }
    labels = {"first": "adam", "second": "sgd"}
    expected = {
        f"{labels[v.path.split('/')[0]]}/{v.path}/{q}"
        for v in model.trainable_variables
        for q in QUANTITIES
    }
    assert set(scalars) == expected
    assert all(steps_of(w) == list(range(1, 13)) for w in scalars.values())


# --- Keras 2 --------------------------------------------------------------------------


@pytest.mark.tf_only
@pytest.mark.slow
def test_keras_2_says_per_variable_diagnostics_are_keras_3_only() -> None:
    """docs/keras2.md, "Keras 3 only": diagnostics="per_variable" is a clear error under Keras 2.

    A TypeError (as diagnostics=True is), also a NotImplementedError, naming
    per-variable diagnostics; the Keras 2 world's reader says so too.
    """
    import importlib.metadata

    try:  # the distribution, not the module: tests/tf_keras is a namespace package
        importlib.metadata.distribution("tf-keras")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs tf-keras")
    code = """
import os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import introspect_opt
from introspect_opt._tf_keras.callbacks import _TfKeras
for value in ("per_variable", True):
    try:
        introspect_opt.LearningRateLogger(diagnostics=value)
    except TypeError as error:
        assert isinstance(error, NotImplementedError), type(error)
        print(error)
try:
    _TfKeras.enable_diagnostics(None, per_variable=True)
except NotImplementedError as error:
    print(error)
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines == [
        "LearningRateLogger(diagnostics='per_variable') is Keras 3 only: per-variable "
        "diagnostics need a Keras 3 optimizer; tf_keras optimizers record the applied "
        "rate, not per-variable (or per-update) diagnostics.",
        "LearningRateLogger(diagnostics=...) is Keras 3 only: tf_keras optimizers record "
        "the applied rate, not per-update diagnostics.",
        "per-variable diagnostics (diagnostics='per_variable') are Keras 3 only (docs/keras2.md)",
    ]
