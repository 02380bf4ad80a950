"""``RateHistoryToTensorBoard``: every update's rate in TensorBoard, at its own step."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from introspect_opt._callbacks.logger import Keras3
from introspect_opt._common.logger import (
    StepCounter,
    check_interval,
    retrace,
    steps_between_reads,
)
from introspect_opt._features import history as _history
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.host import host_array


def _require_tensorboard(callback: str = "RateHistoryToTensorBoard") -> None:
    try:
        import tensorboard  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        raise ImportError(
            f"{callback} writes TensorBoard event files, which needs "
            "the tensorboard package: `pip install tensorboard` (or, from a "
            'checkout of introspect-opt, `pip install ".[tensorboard]"`).'
        ) from None


class RateHistoryToTensorBoard(keras.callbacks.Callback):
    """Writes the rate of every update to TensorBoard, each at its own step.

    The optimizer keeps the rates of its last ``history_size`` updates on the
    device (see ``keep_rate_history``): a ring buffer written by every update.
    Once per ``interval`` this callback reads the whole buffer in one go and
    writes each new rate as the scalar ``"<label>/learning_rate"`` at its own
    update number, into ``<log_dir>/train`` (where Keras's ``TensorBoard``
    callback writes too). Every step's rate reaches TensorBoard, also with
    ``steps_per_execution=32``, at one read per interval. Labels are those of
    ``LearningRateLogger``. TensorBoard only: it writes nothing into ``fit``'s
    logs (that is ``LearningRateLogger``'s job).

    Args:
        log_dir: The TensorBoard log directory (as for ``keras.callbacks.TensorBoard``).
        interval: When to read: ``"epoch"``, ``"batch"`` (after every call of
            the train function) or a positive int ``N`` (every ``N`` steps).
        history_size: How many updates the buffer keeps; by default the most
            steps that can run between two reads. If rates leave the buffer
            before they are read, the callback warns once with their count.
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
        >>> board = introspect_opt.RateHistoryToTensorBoard(tempfile.mkdtemp())
        >>> _ = model.fit(np.ones((32, 2)), np.ones((32, 1)), batch_size=4, verbose=0,
        ...               callbacks=[board])
        >>> introspect_opt.rate_history(model)[0].tolist()  # all 8 updates, read at the end
        [1, 2, 3, 4, 5, 6, 7, 8]
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        interval: str | int = "epoch",
        history_size: int | None = None,
        optimizers: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise ValueError(
                f"log_dir must be a directory path (str or os.PathLike); received {log_dir!r}."
            )
        _require_tensorboard()
        self.log_dir = os.fspath(log_dir)
        self.interval = check_interval(interval)
        self.history_size = (
            None if history_size is None else _history.check_size(history_size, "history_size")
        )
        self._given = Keras3.check_optimizers(optimizers)
        self._tracked: list[tuple[str, Any, bool]] = []
        self._writer: Any = None
        self._writers: dict[str, Any] = {}
        self._logged: dict[str, int] = {}
        self._steps = StepCounter()
        self._warned = False

    def _steps_between_reads(self) -> int:
        return steps_between_reads(
            "RateHistoryToTensorBoard", self.interval, self.model, self.params
        )

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        import tensorflow as tf

        self._tracked = Keras3.track("RateHistoryToTensorBoard", self.model, self._given)
        wanted = self.history_size or max(self._steps_between_reads(), 1)
        created = False
        for name, optimizer, _ in self._tracked:
            state = optimizer._ensure_introspection_state()
            kept = _history.history_size(state)
            size = kept if kept >= wanted and self.history_size is None else wanted
            # A later fit reading less often, or a file that brought another
            # size: resized, newest entries kept.
            created |= _history.resize(optimizer, size)
            self._logged[name] = int(host_array(optimizer.iterations))
        if created:
            retrace(self.model)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps.start_epoch()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._steps.read_due(batch, self.interval):
            self._write()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._write()
        self._writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.flush()

    def _write(self) -> None:
        import tensorflow as tf

        _keras_private.sync_training_state(self.model)  # JAX keeps fit\'s state off the variables
        for name, optimizer, _ in self._tracked:
            done = int(host_array(optimizer.iterations))
            updates, rates, lost = _history.rates_since(optimizer, self._logged.get(name, 0), done)
            if lost > 0 and not self._warned:
                self._warned = True
                size = _history.history_size(optimizer._ensure_introspection_state())
                warnings.warn(
                    f"RateHistoryToTensorBoard: the rates of {lost} updates of "
                    f"'{name}' had already left the on-device history when it was "
                    f"read (it keeps {size}); pass a larger history_size (at least "
                    "the number of steps between reads).",
                    stacklevel=2,
                )
            if updates.size:
                self._block_writer(f"{name}/learning_rate")(
                    tf.constant(updates, tf.int64), tf.constant(rates.astype(np.float32))
                )
                self._logged[name] = int(updates[-1])

    def _block_writer(self, tag: str) -> Any:
        """One compiled call that writes a whole block of (step, value) scalars.

        An eager ``tf.summary.scalar`` costs about half a millisecond of
        Python and dispatch each; once per step that would be most of a small
        model's step time.
        """
        writer = self._writers.get(tag)
        if writer is None:
            import tensorflow as tf

            summary_writer = self._writer

            def write(steps: Any, values: Any) -> None:
                with summary_writer.as_default():
                    for i in tf.range(tf.shape(steps)[0]):
                        # The loop's name scope would prefix the tag ("while/").
                        with tf.compat.v1.name_scope(None):
                            tf.summary.scalar(tag, values[i], step=steps[i])

            writer = tf.function(
                write,
                input_signature=[
                    tf.TensorSpec([None], tf.int64),
                    tf.TensorSpec([None], tf.float32),
                ],
            )
            self._writers[tag] = writer
        return writer
