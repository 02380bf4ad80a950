"""UpdateCSVLogger: one CSV row per applied update, streamed and resumable."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import make_data, make_model, schedule_value, sync

import introspect_opt
from introspect_opt import IntrospectableSGD, UpdateCSVLogger

# The torch backend runs one step per call.
TORCH = keras.backend.backend() == "torch"

# Exactly representable steps of a schedule that compiled and eager code
# evaluate alike, so expected rates compare bit for bit.
STAIRS = keras.optimizers.schedules.PiecewiseConstantDecay(
    [2, 5, 9, 14], [0.05, 0.025, 0.0125, 0.00625, 0.003125]
)
DIAGNOSTICS = ["gradient_norm", "update_norm", "update_to_weight_ratio"]


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def updates_of(path: Path) -> list[int]:
    return [int(row["update"]) for row in rows_of(path)]


def rate(step: int) -> str:
    """The rate an update at raw step ``step`` applies, as the file writes it."""
    return repr(float(schedule_value(STAIRS, step)))


def iterations(model: Any) -> int:
    optimizer = sync(model)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return int(keras.ops.convert_to_numpy(inner.iterations))


def compiled(steps_per_execution: int = 1, **kwargs: Any) -> Any:
    model = make_model()
    model.compile(
        IntrospectableSGD(STAIRS, **kwargs),
        loss="mse",
        steps_per_execution=1 if TORCH else steps_per_execution,
    )
    return model


def fit(model: Any, callbacks: list[Any], samples: int = 40, epochs: int = 2, **kw: Any) -> Any:
    x, y = make_data(samples)
    return model.fit(
        x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks, **kw
    )


class Peek(keras.callbacks.Callback):
    """After each epoch (and after the logger): (iterations, rows in the file)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.seen: list[tuple[int, int]] = []

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.seen.append((iterations(self.model), len(rows_of(self.path))))


@pytest.mark.parametrize(
    ("steps_per_execution", "interval"), [(1, "epoch"), (3, "batch"), (3, 4), (2, "epoch")]
)
def test_one_row_per_update_streamed_at_each_read(
    tmp_path: Path, steps_per_execution: int, interval: Any
) -> None:
    """Every update gets one row with its exact rate, flushed by the read, in blocks too.

    Five steps per epoch: blocks of 3 (or 2) do not divide the epoch.
    """
    path = tmp_path / "updates.csv"
    model = compiled(steps_per_execution)
    peek = Peek(path)
    fit(model, [UpdateCSVLogger(path, interval=interval), peek])
    assert iterations(model) == 10
    assert path.read_text().splitlines()[0] == "update,learning_rate"
    rows = rows_of(path)
    assert [int(r["update"]) for r in rows] == list(range(1, 11))
    assert [r["learning_rate"] for r in rows] == [rate(n - 1) for n in range(1, 11)]
    # Read back with float, the text is the float32 value, bit for bit.
    assert all(
        np.float32(float(r["learning_rate"])) == schedule_value(STAIRS, n - 1)
        for n, r in enumerate(rows, start=1)
    )
    # Streaming: each epoch's rows are in the file when the epoch ends.
    assert peek.seen == [(5, 5), (10, 10)]


class DiagnosticsAtBatchEnd(keras.callbacks.Callback):
    """After each call of the train function: {update: last_update_diagnostics}."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, dict[str, float]] = {}

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        done = iterations(self.model)
        self.seen[done] = introspect_opt.last_update_diagnostics(self.model.optimizer)


def test_diagnostics_fill_the_last_row_of_each_read(tmp_path: Path) -> None:
    """With diagnostics, the last update of each block has them, exactly; other rows are empty."""
    path = tmp_path / "updates.csv"
    model = compiled(3)
    recorder = DiagnosticsAtBatchEnd()
    fit(model, [UpdateCSVLogger(path, interval="batch", diagnostics=True), recorder])
    rows = rows_of(path)
    assert list(rows[0]) == ["update", "learning_rate", *DIAGNOSTICS]
    assert [int(r["update"]) for r in rows] == list(range(1, 11))
    # Blocks of 3 in epochs of 5 steps end at updates 3, 5, 8, 10 (every update on torch).
    assert sorted(recorder.seen) == (list(range(1, 11)) if TORCH else [3, 5, 8, 10])
    for row in rows:
        update = int(row["update"])
        if update in recorder.seen:
            expected = recorder.seen[update]
            assert [row[k] for k in DIAGNOSTICS] == [repr(expected[k]) for k in DIAGNOSTICS]
            assert np.isfinite(expected["gradient_norm"])
        else:
            assert [row[k] for k in DIAGNOSTICS] == ["", "", ""]


def test_per_variable_summary_columns_follow_the_global_ones(tmp_path: Path) -> None:
    """``diagnostics="per_variable"``: min/median/max columns, as LearningRateLogger names them.

    Plain SGD without momentum: every variable's effective rate is the rate
    the update applied (to float32 rounding of the weights), so min, median
    and max are that rate.
    """
    path = tmp_path / "updates.csv"
    model = compiled(1)
    fit(model, [UpdateCSVLogger(path, interval="batch", diagnostics="per_variable")])
    rows = rows_of(path)
    summaries = [
        f"{q}/{s}"
        for q in ("update_to_weight_ratio", "effective_learning_rate")
        for s in ("min", "median", "max")
    ]
    assert list(rows[0]) == ["update", "learning_rate", *DIAGNOSTICS, *summaries]
    assert [int(r["update"]) for r in rows] == list(range(1, 11))
    for row in rows:
        applied = float(row["learning_rate"])
        lowest, middle, highest = (
            float(row[f"effective_learning_rate/{s}"]) for s in ("min", "median", "max")
        )
        assert lowest <= middle <= highest
        np.testing.assert_allclose([lowest, highest], applied, rtol=1e-3)
        ratios = [float(row[f"update_to_weight_ratio/{s}"]) for s in ("min", "median", "max")]
        assert ratios == sorted(ratios) and ratios[0] > 0
    final = introspect_opt.last_update_diagnostics(model, per_variable=True)
    expected = min(v["update_to_weight_ratio"] for v in final.values())
    assert rows[-1]["update_to_weight_ratio/min"] == repr(expected)


def test_gradient_accumulation_writes_applied_updates_only(tmp_path: Path) -> None:
    """With accumulation over 2 steps, 12 steps are 6 updates, each applying s(2n - 1)."""
    path = tmp_path / "updates.csv"
    model = compiled(gradient_accumulation_steps=2)
    fit(model, [UpdateCSVLogger(path)], samples=48)
    assert iterations(model) == 6
    rows = rows_of(path)
    assert [int(r["update"]) for r in rows] == list(range(1, 7))
    assert [r["learning_rate"] for r in rows] == [rate(2 * n - 1) for n in range(1, 7)]


def test_a_history_too_small_warns_and_writes_what_it_holds(tmp_path: Path) -> None:
    """Rates that left the on-device history before the read: one warning with their count."""
    path = tmp_path / "updates.csv"
    with pytest.warns(UserWarning, match=r"the rates of 3 updates \(from update 1\)"):
        fit(compiled(), [UpdateCSVLogger(path, history_size=2)], epochs=1)
    assert [(int(r["update"]), r["learning_rate"]) for r in rows_of(path)] == [
        (4, rate(3)),
        (5, rate(4)),
    ]


class RateAtBatchEnd(keras.callbacks.Callback):
    """After each batch: (iterations, current_learning_rate)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, float]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        inner = sync(self.model).inner_optimizer
        self.seen.append((iterations(self.model), float(inner.current_learning_rate)))


def test_steps_loss_scaling_skipped_get_no_row(tmp_path: Path) -> None:
    """Under mixed_float16 a step with non-finite gradients applies no update: no row."""
    keras.config.set_dtype_policy("mixed_float16")
    path = tmp_path / "updates.csv"
    model = compiled()
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = make_data(48)
    x[8:16] = np.inf  # the second batch cannot update
    recorder = RateAtBatchEnd()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[UpdateCSVLogger(path, interval="batch"), recorder],
    )
    done = iterations(model)
    assert done < 6
    assert recorder.seen[1][0] == recorder.seen[0][0]  # the skipped step
    rows = rows_of(path)
    assert [int(r["update"]) for r in rows] == list(range(1, done + 1))
    # Each row's rate is what current_learning_rate read right after that update.
    applied = dict(recorder.seen)
    assert [float(r["learning_rate"]) for r in rows] == [applied[n] for n in range(1, done + 1)]
    assert [r["learning_rate"] for r in rows] == [rate(n - 1) for n in range(1, done + 1)]


# --- resumption ---------------------------------------------------------------------


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


def _backed_up_run(
    backup_dir: Path,
    callbacks: list[Any],
    save_freq: Any = "epoch",
    before: tuple[Any, ...] = (),
) -> Any:
    """A fresh model and optimizer trained 3 epochs of 6 steps with BackupAndRestore.

    ``before`` goes before BackupAndRestore in the list (its on_train_begin
    runs before the restore), ``callbacks`` after it.
    """
    model = make_model()
    model.compile(IntrospectableSGD(STAIRS, momentum=0.9), loss="mse")
    backup = keras.callbacks.BackupAndRestore(str(backup_dir), save_freq=save_freq)
    fit(model, [*before, backup, *callbacks], samples=48, epochs=3)
    return model


def test_resumed_after_epoch_backups_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """Rows the crashed run wrote past its last backup are removed, then written again.

    The resumed file is the uninterrupted run's, byte for byte (diagnostics included).
    """

    def logger(path: Path) -> UpdateCSVLogger:
        return UpdateCSVLogger(path, interval="batch", diagnostics=True)

    straight = tmp_path / "straight.csv"
    _backed_up_run(tmp_path / "a", [], before=(logger(straight),))

    # The logger starts before BackupAndRestore restores: it matches the file
    # to the optimizer once every callback has started.
    resumed = tmp_path / "resumed.csv"
    with pytest.raises(Crash):
        _backed_up_run(tmp_path / "b", [CrashAt(2, 3)], before=(logger(resumed),))
    # Two epochs (12 updates) backed up, 3 more written before the crash.
    assert updates_of(resumed) == list(range(1, 16))
    _backed_up_run(tmp_path / "b", [], before=(logger(resumed),))
    assert updates_of(resumed) == list(range(1, 19))
    assert resumed.read_bytes() == straight.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))  # the rewrite left no temporary file


@pytest.mark.parametrize(("interval", "written"), [("epoch", 6), ("batch", 11)])
def test_resumed_after_batch_backups_has_each_update_once(
    tmp_path: Path, interval: str, written: int
) -> None:
    """save_freq=2: the file is cut back to the backup, or filled up to it from the history.

    The crash comes before batch 5 of epoch 1, the last backup after its batch
    3 (update 10). Reading once per epoch, the file then ends at update 6 and
    the restored rate history brings updates 7-10; reading every batch, it
    ends at update 11, one past the backup, and that row goes. Keras then
    replays the epoch from its first batch, with the update count going on
    from 10 (see docs/persistence.md): 4 more updates than an uninterrupted
    run, each row with the diagnostics of the update that stayed.
    """
    path = tmp_path / "updates.csv"
    with pytest.raises(Crash):
        _backed_up_run(
            tmp_path / "backup",
            [UpdateCSVLogger(path, interval=interval, diagnostics=True), CrashAt(1, 5)],
            save_freq=2,
        )
    crashed = rows_of(path)
    assert [int(r["update"]) for r in crashed] == list(range(1, written + 1))
    recorder = DiagnosticsAtBatchEnd()
    model = _backed_up_run(
        tmp_path / "backup",
        [UpdateCSVLogger(path, interval=interval, diagnostics=True), recorder],
        save_freq=2,
    )
    done = iterations(model)
    assert done == 3 * 6 + 4
    rows = rows_of(path)
    assert [int(r["update"]) for r in rows] == list(range(1, done + 1))
    assert [r["learning_rate"] for r in rows] == [rate(n - 1) for n in range(1, done + 1)]
    # Reading per epoch: the epochs' ends (the resumed epoch runs updates 11-16)
    # and the end of the rows the restored history brought (update 10).
    filled = {int(r["update"]) for r in rows if r["gradient_norm"]}
    assert filled == (set(range(1, done + 1)) if interval == "batch" else {6, 10, 16, 22})
    for row in rows[10:]:
        update = int(row["update"])
        if update in filled:
            seen = recorder.seen[update]
            assert [row[k] for k in DIAGNOSTICS] == [repr(seen[k]) for k in DIAGNOSTICS]
    if interval == "batch":
        # Update 11 of the crashed run trained on another batch than the one kept.
        assert crashed[10]["gradient_norm"] != rows[10]["gradient_norm"]


def test_later_fits_continue_the_file(tmp_path: Path) -> None:
    """A second fit continues; a row cut short is dropped; append=False and a new run start over."""
    path = tmp_path / "updates.csv"
    model = compiled()
    fit(model, [UpdateCSVLogger(path)], epochs=1)
    with path.open("a") as file:
        file.write("6,0.0")  # an interrupted write: no newline
    fit(model, [UpdateCSVLogger(path)], epochs=1)
    assert updates_of(path) == list(range(1, 11))
    assert path.read_text().endswith(f"\n10,{rate(9)}\n")

    fit(model, [UpdateCSVLogger(path, append=False)], epochs=1)
    assert updates_of(path) == list(range(11, 16))

    # A new optimizer has applied no update: the file is cut back to its header.
    fit(compiled(), [UpdateCSVLogger(path)], epochs=1)
    assert [(int(r["update"]), r["learning_rate"]) for r in rows_of(path)] == [
        (n, rate(n - 1)) for n in range(1, 6)
    ]


def test_a_file_with_other_columns_is_refused_unchanged(tmp_path: Path) -> None:
    """Another header fails at the start of fit, naming the file and both column lists."""
    path = tmp_path / "updates.csv"
    path.write_text("update,learning_rate\n1,0.05\n")
    model = compiled()
    weights = model.get_weights()
    with pytest.raises(ValueError) as error:
        fit(model, [UpdateCSVLogger(path, diagnostics=True)], epochs=1)
    assert str(error.value) == (
        f"UpdateCSVLogger: {str(path)!r} has the columns ['update', 'learning_rate'], not "
        "this callback's ['update', 'learning_rate', 'gradient_norm', 'update_norm', "
        "'update_to_weight_ratio']; it was written with other settings (diagnostics=...) "
        "or by something else. Pass another filename, or append=False to start it "
        "afresh. The file was left as it was."
    )
    assert path.read_text() == "update,learning_rate\n1,0.05\n"
    assert iterations(model) == 0
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))


def test_a_row_without_an_update_number_is_refused_unchanged(tmp_path: Path) -> None:
    """A damaged row in what is kept fails before the file is rewritten, naming its line."""
    path = tmp_path / "updates.csv"
    model = compiled()
    fit(model, [UpdateCSVLogger(path)], epochs=1)
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = "x" + lines[3][1:]  # update 3, on line 4
    text = "".join(lines) + "6,0.0\n"  # a row past the optimizer: the file is cut
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        fit(model, [UpdateCSVLogger(path)], epochs=1)
    assert str(error.value) == (
        f"UpdateCSVLogger: line 4 of {str(path)!r} does not start with an update number "
        f"('x,{rate(2)}'); the file was left as it was."
    )
    assert path.read_text() == text
    assert iterations(model) == 5
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"filename": ""}, "filename must be a file path"),
        ({"filename": "u.csv", "interval": "step"}, 'interval must be "epoch", "batch"'),
        ({"filename": "u.csv", "diagnostics": 1}, "diagnostics must be True or False"),
        ({"filename": "u.csv", "append": "yes"}, "append must be True or False"),
        ({"filename": "u.csv", "history_size": 0}, "history_size must be a positive int"),
    ],
)
def test_bad_arguments_are_refused_in_init(kwargs: dict[str, Any], message: str) -> None:
    """Invalid arguments fail in __init__ with what was received."""
    with pytest.raises(ValueError, match=message):
        UpdateCSVLogger(**kwargs)


def test_plain_optimizer_fails_at_train_begin(tmp_path: Path) -> None:
    """A plain Keras optimizer: a clear error at the start of fit, naming the fix, no file."""
    model = make_model()
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    with pytest.raises(TypeError, match=r"UpdateCSVLogger .*introspect_opt.introspect"):
        fit(model, [UpdateCSVLogger(tmp_path / "u.csv")], epochs=1)
    assert not (tmp_path / "u.csv").exists()


@pytest.mark.parametrize("earlier", ["UpdateCSVLogger", "RateHistoryToTensorBoard", "none"])
def test_a_new_file_gets_this_fits_updates_only(tmp_path: Path, earlier: str) -> None:
    """docs/logging.md: a file missing when fit starts holds no update applied before it."""
    model = compiled()
    callbacks: dict[str, list[Any]] = {
        "UpdateCSVLogger": [UpdateCSVLogger(tmp_path / "first.csv")],
        "RateHistoryToTensorBoard": [
            introspect_opt.RateHistoryToTensorBoard(tmp_path / "logs", history_size=15)
        ],
        "none": [],
    }
    fit(model, callbacks[earlier], epochs=2)  # 10 updates, a history of them kept or not
    assert iterations(model) == 10
    path = tmp_path / "second.csv"
    fit(model, [UpdateCSVLogger(path)], epochs=1)
    assert [(int(r["update"]), r["learning_rate"]) for r in rows_of(path)] == [
        (n, rate(n - 1)) for n in range(11, 16)
    ]
    path.unlink()  # deleted between fits: a new file again
    fit(model, [UpdateCSVLogger(path)], epochs=1)
    assert updates_of(path) == list(range(16, 21))


def test_a_multi_optimizer_is_refused_at_train_begin(tmp_path: Path) -> None:
    """docs/logging.md: one optimizer's rows per file; a MultiOptimizer fails before any update."""
    model = make_model()
    multi = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(
            introspect_opt.IntrospectableSGD(0.1, name="low"),
            {"dense.*": introspect_opt.IntrospectableSGD(0.2, name="high")},
        )
    )
    model.compile(multi, loss="mse")
    with pytest.raises(TypeError, match=r"UpdateCSVLogger writes the rows of one optimizer.*2"):
        fit(model, [UpdateCSVLogger(tmp_path / "u.csv")], epochs=1)
    assert not (tmp_path / "u.csv").exists()
    assert iterations(model) == 0
