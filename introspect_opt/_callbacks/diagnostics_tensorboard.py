"""``DiagnosticsToTensorBoard``: each variable's diagnostics in TensorBoard, at their update."""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np

from introspect_opt._callbacks.logger import Keras3
from introspect_opt._callbacks.tensorboard import _require_tensorboard
from introspect_opt._common.logger import StepCounter, check_interval, retrace
from introspect_opt._features import diagnostics as _diagnostics
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.host import host_array

_NAME = "DiagnosticsToTensorBoard"
# Per-variable quantities that also get a histogram over the variables.
HISTOGRAMS = ("update_to_weight_ratio", "effective_learning_rate")


class DiagnosticsToTensorBoard(keras.callbacks.Callback):
    """Writes each variable's diagnostics to TensorBoard, at the update they belong to.

    It switches per-variable diagnostics on for each optimizer it writes
    (``record_diagnostics(optimizer, per_variable=True)``). Once per
    ``interval`` it reads the last applied update's values in one go and
    writes, into ``<log_dir>/train`` (where Keras's ``TensorBoard`` callback
    writes too) at that update's number (``optimizer.iterations`` right after
    it):

    * the scalars ``"<label>/<variable path>/<quantity>"`` for each variable
      the update changed and each of ``update_to_weight_ratio``,
      ``effective_learning_rate``, ``gradient_norm``, ``update_norm`` and
      ``weight_norm`` (see ``last_update_diagnostics``); a variable the
      update did not change, or a zero gradient's ``effective_learning_rate``,
      gets no point;
    * the histograms ``"<label>/update_to_weight_ratio"`` and
      ``"<label>/effective_learning_rate"`` of those values over the variables
      (finite values only).

    The device keeps the values of the last update only, so each read writes
    one update: every update needs ``interval="batch"`` with
    ``steps_per_execution=1``; with ``steps_per_execution=k`` it writes every
    k-th update, and with ``interval=N`` about one in ``N``. Labels are those
    of ``LearningRateLogger`` (each sub-optimizer's under a
    ``MultiOptimizer``). The summaries over variables (min, median, max) go
    into ``fit``'s logs with ``LearningRateLogger(diagnostics="per_variable")``.

    Each update is written once per log directory: a read that finds no
    update since the previous one writes nothing, and a ``fit`` that goes on
    from applied updates (a later ``fit``, or a run ``BackupAndRestore``
    resumed) skips the updates the directory's event files already hold
    (those the interrupted run wrote after its last backup keep the values
    it wrote). A new optimizer (no update applied yet) on a directory that
    holds another run's updates writes its own at the same numbers, with a
    warning: use one directory per run.

    Args:
        log_dir: The TensorBoard log directory (as for ``keras.callbacks.TensorBoard``).
        interval: When to read: ``"batch"`` (after every call of the train
            function), ``"epoch"`` or a positive int ``N`` (every ``N`` steps).
        optimizers: ``{label: optimizer}`` for optimizers held outside
            ``model.optimizer``; by default ``model.optimizer``.

    Raises:
        ValueError: an argument is invalid (the message says what is valid).
        ImportError: the ``tensorboard`` package is not installed.
        TypeError: the model's optimizer is not introspectable.

    Examples:
        >>> import tempfile, keras, numpy as np, introspect_opt
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(introspect_opt.IntrospectableSGD(0.1), loss="mse")
        >>> board = introspect_opt.DiagnosticsToTensorBoard(tempfile.mkdtemp())
        >>> _ = model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=4, verbose=0,
        ...               callbacks=[board])
        >>> # What it wrote at update 2, as "sgd/<variable path>/<quantity>":
        >>> rows = introspect_opt.last_update_diagnostics(model, per_variable=True)
        >>> [round(row["effective_learning_rate"], 4) for row in rows.values()]
        [0.1, 0.1]
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        interval: str | int = "batch",
        optimizers: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise ValueError(
                f"log_dir must be a directory path (str or os.PathLike); received {log_dir!r}."
            )
        _require_tensorboard(_NAME)
        self.log_dir = os.fspath(log_dir)
        self.interval = check_interval(interval)
        self._given = Keras3.check_optimizers(optimizers)
        self._tracked: list[tuple[str, Any, bool]] = []
        self._writer: Any = None
        # Per label: the last update written to this directory (by this
        # callback, or found in its event files), and the last update the
        # current fit need not write.
        self._written: dict[str, int] = {}
        self._logged: dict[str, int] = {}
        self._scanned: set[str] = set()  # labels looked up in the directory's files
        self._started = False
        self._steps = StepCounter()

    @property
    def _directory(self) -> str:
        return os.path.join(self.log_dir, "train")

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        import tensorflow as tf

        self._tracked = Keras3.track(_NAME, self.model, self._given)
        created = False
        for _, optimizer, _ in self._tracked:
            created |= Keras3.enable_diagnostics(optimizer, per_variable=True)
        if created:
            retrace(self.model)
        unknown = [name for name in self._labels() if name not in self._scanned]
        if unknown:
            # What earlier runs wrote (this callback's own writes it counts itself).
            self._scanned.update(unknown)
            self._written.update(_last_updates_written(self._directory, unknown))
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self._directory)
        # BackupAndRestore may restore the optimizer after this hook (it may
        # be later in the list): the update counts are read at the first epoch.
        self._started = False

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps.start_epoch()
        if not self._started:
            self._start()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._steps.read_due(batch, self.interval):
            self._write()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._write()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.flush()

    def _labels(self) -> list[str]:
        return [name for name, _, _ in self._tracked]

    def _start(self) -> None:
        """Which updates this ``fit`` writes, once every callback has started."""
        self._started = True
        _keras_private.sync_training_state(self.model)  # JAX keeps fit's state off the variables
        for name, optimizer, _ in self._tracked:
            done = int(host_array(optimizer.iterations))
            written = self._written.get(name, 0)
            if done == 0 and written > 0:
                warnings.warn(
                    f"{_NAME}: {self._directory!r} already holds the diagnostics of "
                    f"'{name}' up to update {written}, from another run; this run starts "
                    "at update 1 and writes its own at the same update numbers. Use a "
                    "new log_dir for each run (TensorBoard shows each as one run).",
                    stacklevel=2,
                )
                written = self._written[name] = 0
            # Updates applied before this fit are not its own (the last one's
            # values, restored from a file, may be stale too).
            self._logged[name] = max(written, done)

    def _write(self) -> None:
        import tensorflow as tf

        if not self._started:
            return
        _keras_private.sync_training_state(self.model)  # JAX keeps fit's state off the variables
        wrote = False
        for name, optimizer, _ in self._tracked:
            done = int(host_array(optimizer.iterations))
            if done <= self._logged.get(name, 0):
                continue  # no update since the last one written
            self._logged[name] = done
            self._written[name] = max(self._written.get(name, 0), done)
            summaries = _summaries(name, _diagnostics.read_per_variable(optimizer))
            if summaries:
                with self._writer.as_default():
                    tf.summary.experimental.write_raw_pb(summaries, step=done)
                wrote = True
        if wrote:
            # On disk at once: a run that resumes after an interruption reads
            # what this one wrote, and a writer left behind by an exception
            # holds nothing it could add to the files later.
            self._writer.flush()


def _summaries(name: str, rows: Mapping[str, Mapping[str, float]]) -> list[bytes]:
    """A read's scalars and histograms for ``name``, as serialized ``Summary`` protos.

    Built on the host and written with one op: a compiled loop of
    ``tf.summary.write`` took about 40 µs per scalar (a model with a hundred
    variables has five hundred per read), these protos about 10. Empty for
    values that are not an update's (all ``nan``: restored, stale).
    """
    import tensorflow as tf
    from tensorboard.plugins.histogram import summary_v2 as histogram  # type: ignore[import-untyped]

    scalars = tf.compat.v1.Summary()
    for path, row in rows.items():
        for quantity in _diagnostics.PER_VARIABLE_KEYS:
            if not np.isnan(row[quantity]):
                # What tf.summary.scalar writes: a float32 scalar for the scalars plugin.
                value = scalars.value.add(tag=f"{name}/{path}/{quantity}")
                value.metadata.plugin_data.plugin_name = "scalars"
                value.tensor.dtype = tf.float32.as_datatype_enum
                value.tensor.float_val.append(row[quantity])
    if not scalars.value:
        return []
    spreads = [
        histogram.histogram_pb(
            f"{name}/{quantity}", _finite(row[quantity] for row in rows.values())
        )
        for quantity in HISTOGRAMS
    ]
    return [scalars.SerializeToString(), *(spread.SerializeToString() for spread in spreads)]


def _finite(values: Iterable[float]) -> np.ndarray:
    array = np.array(list(values), dtype=np.float32)
    return array[np.isfinite(array)]


def _last_updates_written(directory: str, labels: list[str]) -> dict[str, int]:
    """The last update of each label whose diagnostics the event files in ``directory`` hold.

    Newest file first: each run of this callback writes updates past the
    ones before, so the newest file that holds a label's diagnostics holds
    its last update. A record cut short (an interrupted write) ends its file.
    """
    import tensorflow as tf

    files = glob.glob(os.path.join(glob.escape(directory), "events.out.tfevents.*"))
    files.sort(key=lambda path: (os.path.getmtime(path), path), reverse=True)
    found: dict[str, int] = {}
    for path in files:
        in_file: dict[str, int] = {}
        try:
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    name = _label_of(value.tag, labels)
                    if name is not None and name not in found:
                        in_file[name] = max(in_file.get(name, 0), int(event.step))
        except tf.errors.DataLossError:
            pass
        found.update(in_file)
        if len(found) == len(labels):
            break
    return found


def _label_of(tag: str, labels: list[str]) -> str | None:
    """The label a tag this callback writes belongs to; None for other tags."""
    for name in labels:
        if tag in (f"{name}/{quantity}" for quantity in HISTOGRAMS):
            return name
        head, _, quantity = tag.rpartition("/")
        if quantity in _diagnostics.PER_VARIABLE_KEYS and head.startswith(f"{name}/"):
            return name
    return None


__all__ = ["DiagnosticsToTensorBoard"]
