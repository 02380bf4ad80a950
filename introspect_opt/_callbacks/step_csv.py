"""``UpdateCSVLogger``: one CSV row per applied update, streamed and resumable."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import warnings
from typing import Any, Literal

import keras

from introspect_opt._callbacks.logger import Keras3
from introspect_opt._common.logger import (
    SUMMARIES,
    SUMMARIZED,
    StepCounter,
    check_diagnostics,
    check_interval,
    retrace,
    steps_between_reads,
    summarize,
)
from introspect_opt._features import diagnostics as _diagnostics
from introspect_opt._features import history as _history
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.host import host_array

_NAME = "UpdateCSVLogger"


class UpdateCSVLogger(keras.callbacks.Callback):
    """Writes one CSV row per applied update: its number, its rate, its diagnostics.

    Keras's ``CSVLogger`` writes one row per epoch. This callback writes one
    row per update the model's optimizer applied, with the columns
    ``update`` (``n`` = 1, 2, ...: the value of ``optimizer.iterations`` right
    after the update, so gradient-accumulation micro-steps and steps a
    ``LossScaleOptimizer`` skipped get no row) and ``learning_rate`` (the rate
    that update applied, written with ``repr(float(...))``: reading it back
    with ``float`` gives the exact float32 value, bit for bit). With
    ``diagnostics=True`` it adds ``gradient_norm``, ``update_norm`` and
    ``update_to_weight_ratio`` (see ``record_diagnostics``); with
    ``diagnostics="per_variable"`` also the min, median and max over variables
    of the per-variable ``update_to_weight_ratio`` and
    ``effective_learning_rate`` (``update_to_weight_ratio/min`` ..., as
    ``LearningRateLogger`` names them). The device holds
    only the last update's, so they fill the row of the last update before
    each read (every row with ``interval="batch"`` and
    ``steps_per_execution=1``; the last row of each block of
    ``steps_per_execution`` steps otherwise) and are empty in the others.

    Every update's rate is recorded on the device in the optimizer's rate
    history (see ``keep_rate_history``), so rows are exact also with
    ``steps_per_execution > 1`` and at one read per ``interval``. Each read
    appends its new rows to the file and flushes it: nothing accumulates in
    memory over a run.

    The file is the optimizer's record (with the default ``append=True``):
    at the start of ``fit`` (once ``BackupAndRestore`` has restored the
    optimizer) rows the optimizer has not applied yet, such as those an
    interrupted run wrote after its last backup, are removed (the file is
    rewritten to a temporary file beside it, then moved over it with
    ``os.replace``), and rows between the file's last one and the restored
    update count are written from the restored rate history. A resumed run
    thus leaves each update in the file exactly once. ``append=False`` starts
    the file afresh at each ``fit``, with the updates that ``fit`` applies.

    Args:
        filename: The CSV file's path.
        interval: When to read: ``"epoch"``, ``"batch"`` (after every call of
            the train function) or a positive int ``N`` (every ``N`` steps).
        diagnostics: Also record (on the device, see ``record_diagnostics``)
            and write the last update's diagnostics at each read: ``True``,
            or ``"per_variable"`` for the per-variable summary columns too.
        append: Continue the file (the default; see above) or start it
            afresh at each ``fit`` with ``False``.
        history_size: How many updates the on-device history keeps; by
            default the most steps that can run between two reads. If rates
            leave it before they are read, the callback warns once with their
            count.

    Raises:
        ValueError: an argument is invalid (the message says what is valid);
            at the start of ``fit``, the file's header is not this callback's
            columns (the file is left as it was).
        TypeError: at the start of ``fit``, the model's optimizer is not
            introspectable (the message says how to make it so).

    Examples:
        >>> import os, tempfile, keras, numpy as np, introspect_opt
        >>> path = os.path.join(tempfile.mkdtemp(), "updates.csv")
        >>> schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(introspect_opt.IntrospectableSGD(schedule), loss="mse")
        >>> _ = model.fit(np.ones((12, 2)), np.ones((12, 1)), batch_size=4, verbose=0,
        ...               callbacks=[introspect_opt.UpdateCSVLogger(path)])
        >>> print(open(path).read(), end="")
        update,learning_rate
        1,0.10000000149011612
        2,0.05000000074505806
        3,0.02500000037252903
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        *,
        interval: str | int = "epoch",
        diagnostics: bool | Literal["per_variable"] = False,
        append: bool = True,
        history_size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(filename, (str, os.PathLike)) or not os.fspath(filename):
            raise ValueError(
                f"filename must be a file path (str or os.PathLike); received {filename!r}."
            )
        if not isinstance(append, bool):
            raise ValueError(f"append must be True or False; received {append!r}.")
        on, self._per_variable = check_diagnostics(diagnostics)
        self.filename = os.fspath(filename)
        self.interval = check_interval(interval)
        self.diagnostics = diagnostics
        self._diagnostic_keys = list(_diagnostics.KEYS) if on else []
        if self._per_variable:
            self._diagnostic_keys += [f"{q}/{s}" for q in SUMMARIZED for s in SUMMARIES]
        self.append = append
        self.history_size = (
            None if history_size is None else _history.check_size(history_size, "history_size")
        )
        self.columns = ["update", "learning_rate", *self._diagnostic_keys]
        self._optimizer: Any = None
        self._new_file = False
        self._logged = 0  # the last update in the file
        self._reconciled = False
        self._steps = StepCounter()
        self._warned = False
        if self.interval == "epoch":
            # No batch-level work: keep Keras's default (no-op) hook, so that
            # Keras may still dispatch batch callbacks asynchronously.
            self.on_train_batch_end = super().on_train_batch_end  # type: ignore[method-assign]

    # --- fit's hooks ----------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Everything that can fail before anything changes: the file is
        # touched only then, and the optimizer after the file.
        tracked = Keras3.track(_NAME, self.model, None)
        if len(tracked) != 1:
            labels = [label for label, _, _ in tracked]
            raise TypeError(
                f"{_NAME} writes the rows of one optimizer; this model's MultiOptimizer "
                f"has {len(tracked)} ({labels}). Log them with LearningRateLogger "
                "(one key per sub-optimizer) instead."
            )
        ((_, optimizer, _),) = tracked
        wanted = self.history_size or max(self._steps_between_reads(), 1)
        # A file this callback creates now (missing, or deleted since) gets this
        # fit's updates only; a file with a header already is continued.
        self._new_file = not os.path.exists(self.filename) or os.path.getsize(self.filename) == 0
        if self.append:
            _check_header(self.filename, self.columns)
            with open(self.filename, "a", encoding="utf-8"):
                pass  # not writable: fail now, before an update is applied
        else:
            _write_new(self.filename, self.columns)
        self._optimizer = optimizer
        created = False
        if self._diagnostic_keys:
            created |= Keras3.enable_diagnostics(optimizer, self._per_variable)
        state = optimizer._ensure_introspection_state()
        kept = _history.history_size(state)
        size = kept if kept >= wanted and self.history_size is None else wanted
        created |= _history.resize(optimizer, size)
        if created:
            retrace(self.model)
        # BackupAndRestore may restore the optimizer after this hook (it is
        # later in the list): the file is matched to it at the first epoch.
        self._reconciled = False

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps.start_epoch()
        if not self._reconciled:
            self._reconcile()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._steps.read_due(batch, self.interval):
            self._write()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._write()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if not self._reconciled:  # a fit that ran no epoch
            self._reconcile()

    # --- reading and writing ----------------------------------------------------

    def _steps_between_reads(self) -> int:
        return steps_between_reads(_NAME, self.interval, self.model, self.params)

    def _done(self) -> int:
        _keras_private.sync_training_state(self.model)  # JAX keeps fit\'s state off the variables
        return int(host_array(self._optimizer.iterations))

    def _reconcile(self) -> None:
        """Matches the file to the optimizer's update count (after any restore)."""
        self._reconciled = True
        done = self._done()
        if not self.append or self._new_file:
            self._logged = done  # a new file: this fit's updates
            return
        last, clean = _last_update(self.filename)
        if last > done or not clean:
            last = _truncate(self.filename, done)
        self._logged = last
        # Rows the restored optimizer applied but the file lacks (a backup
        # written after the last read): from the restored history.
        self._write(quiet=last == 0)
        self._logged = max(self._logged, done)

    def _write(self, *, quiet: bool = False) -> None:
        optimizer = self._optimizer
        if optimizer is None:
            return
        done = self._done()
        last = self._logged
        updates, rates, lost = _history.rates_since(optimizer, last, done)
        if lost > 0 and not quiet and not self._warned:
            self._warned = True
            size = _history.history_size(optimizer._ensure_introspection_state())
            warnings.warn(
                f"{_NAME}: the rates of {lost} updates (from update {last + 1}) had "
                f"already left the on-device history when it was read (it keeps "
                f"{size}), so {self.filename!r} has no rows for them; pass a larger "
                "history_size (at least the number of steps between reads).",
                stacklevel=2,
            )
        if not updates.size:
            return
        extra: list[str] = []
        if self._diagnostic_keys:
            values: dict[str, float] = {}
            if int(updates[-1]) == done:
                values = _diagnostics.read(optimizer)
                if self._per_variable:
                    values.update(summarize(_diagnostics.read_per_variable(optimizer)))
            extra = [repr(values[key]) if key in values else "" for key in self._diagnostic_keys]
        blank = [""] * len(extra)
        rows = [[str(int(u)), repr(float(r)), *blank] for u, r in zip(updates, rates, strict=True)]
        rows[-1][2:] = extra
        with open(self.filename, "a", newline="", encoding="utf-8") as file:
            csv.writer(file, lineterminator="\n").writerows(rows)
        self._logged = int(updates[-1])


# --- the file ---------------------------------------------------------------------


def _write_new(path: str, columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        csv.writer(file, lineterminator="\n").writerow(columns)


def _check_header(path: str, columns: list[str]) -> None:
    """Writes the header into a missing or empty file; refuses a file with other columns."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        _write_new(path, columns)
        return
    with open(path, newline="", encoding="utf-8") as file:
        header = next(csv.reader(file), [])
    if header != columns:
        raise ValueError(
            f"{_NAME}: {path!r} has the columns {header}, not this callback's "
            f"{columns}; it was written with other settings (diagnostics=...) or by "
            "something else. Pass another filename, or append=False to start it "
            "afresh. The file was left as it was."
        )


def _last_update(path: str) -> tuple[int, bool]:
    """(the file's last update, 0 without rows; whether it ends with a whole row).

    Reads the end of the file only.
    """
    with open(path, "rb") as file:
        end = file.seek(0, os.SEEK_END)
        chunk = 256
        while True:
            start = max(end - chunk, 0)
            file.seek(start)
            tail = file.read(end - start)
            lines = tail.split(b"\n")
            # A whole last line: a newline before it, or the file's start.
            if len(lines) >= 3 or start == 0:
                break
            chunk *= 4
    clean = tail.endswith(b"\n")
    # Between the first piece (the header, or a line the chunk cut) and the
    # last (empty after a final newline, else a row cut short).
    rows = [line for line in lines[1:-1] if line.strip()]
    if not rows:
        return 0, clean
    try:
        return int(rows[-1].split(b",", 1)[0]), clean
    except ValueError:
        return 0, False


def _truncate(path: str, done: int) -> int:
    """Keeps the header and the whole rows up to update ``done``; returns the last kept.

    Streams the file into a temporary file beside it and moves that over it
    (``os.replace``), so an interruption leaves the old file or the new one,
    never a mix. A row that is not a number fails before anything changes.
    """
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    last = 0
    try:
        with (
            open(path, newline="", encoding="utf-8") as source,
            os.fdopen(handle, "w", newline="", encoding="utf-8") as target,
        ):
            header = source.readline()
            target.write(header if header.endswith("\n") else header + "\n")
            for number, line in enumerate(source, start=2):
                if not line.endswith("\n"):
                    break  # a row cut short (an interrupted write)
                field = line.split(",", 1)[0]
                try:
                    update = int(field)
                except ValueError:
                    raise ValueError(
                        f"{_NAME}: line {number} of {path!r} does not start with an "
                        f"update number ({line.rstrip()!r}); the file was left as it was."
                    ) from None
                if update > done:
                    break
                target.write(line)
                last = update
            target.flush()
            os.fsync(target.fileno())
        shutil.copymode(path, temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return last


__all__ = ["UpdateCSVLogger"]
