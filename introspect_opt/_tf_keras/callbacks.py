"""``LearningRateLogger`` for tf_keras (Keras 2) ``fit``: the same logger, a tf_keras callback."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from introspect_opt._common.logger import LoggerCore, check_optimizers, tracked_optimizers
from introspect_opt._tf_keras import compat as private
from introspect_opt._tf_keras.factory import resolve_optimizer
from introspect_opt._tf_keras.mechanism import _IntrospectionMixin

_PER_VARIABLE_ONLY_IN_KERAS_3 = (
    "per-variable diagnostics (diagnostics='per_variable') are Keras 3 only (docs/keras2.md)"
)


class KerasThreeOnlyArgument(TypeError, NotImplementedError):
    """An argument only the Keras 3 callback takes (``diagnostics``).

    A ``TypeError``, as an unexpected keyword argument is, and what tf_keras's
    ``LearningRateLogger(diagnostics=True)`` raised before 0.2; also a
    ``NotImplementedError`` (what it means: not implemented for Keras 2).
    """


class _TfKeras:
    """How the logger finds and reads tf_keras optimizers (see ``_callbacks.logger.Keras3``)."""

    @staticmethod
    def unwrap(value: Any) -> tuple[Any, bool]:
        wrapped = isinstance(value, private.LossScaleOptimizer)
        return (value.inner_optimizer if wrapped else value), wrapped

    @staticmethod
    def check_optimizers(optimizers: Any) -> dict[str, Any] | None:
        return check_optimizers(
            optimizers, _TfKeras.unwrap, _IntrospectionMixin, "introspect_opt.tf_keras"
        )

    @staticmethod
    def track(callback: str, model: Any, given: dict[str, Any] | None) -> list[Any]:
        return tracked_optimizers(
            callback, model, given, resolve_optimizer, _TfKeras.unwrap, _TfKeras.default_name
        )

    @staticmethod
    def default_name(optimizer_class: type) -> str | None:
        return None  # tf_keras does not number optimizer names

    @staticmethod
    def raw_steps(optimizer: Any) -> int:
        return 0  # only used for diagnostics, which tf_keras optimizers do not record

    @staticmethod
    def enable_diagnostics(optimizer: Any, per_variable: bool = False) -> bool:
        if per_variable:
            raise NotImplementedError(_PER_VARIABLE_ONLY_IN_KERAS_3)
        raise NotImplementedError("per-update diagnostics are Keras 3 only (docs/keras2.md)")

    @staticmethod
    def diagnostics(optimizer: Any) -> dict[str, float]:
        raise NotImplementedError("per-update diagnostics are Keras 3 only (docs/keras2.md)")

    @staticmethod
    def per_variable_diagnostics(optimizer: Any) -> dict[str, dict[str, float]]:
        raise NotImplementedError(_PER_VARIABLE_ONLY_IN_KERAS_3)

    @staticmethod
    def applied_rate(optimizer: Any) -> float:
        return float(optimizer.current_learning_rate)

    @staticmethod
    def host_float(value: Any) -> float:
        # numpy(): the one read that works for tf.distribute variables in
        # cross-replica context too (see _keras3.state.host_array).
        return float(np.asarray(value.numpy() if hasattr(value, "numpy") else value))

    @staticmethod
    def sync_training_state(model: Any) -> None:
        return None  # tf_keras keeps fit's state on the variables

    @staticmethod
    def describe(optimizer: Any) -> str:
        name = getattr(optimizer, "name", None) or optimizer.get_config().get("name", "?")
        return f"{type(optimizer).__name__} '{name}'"


class LearningRateLogger(private.Callback):
    """Writes the learning rate each update applied into tf_keras ``fit``'s logs.

    The Keras 2 twin of ``introspect_opt.LearningRateLogger`` (same intervals,
    same keys): ``History``, ``CSVLogger``, the progress bar and tf_keras's
    ``TensorBoard`` show the rate the updates actually used. Keys are
    ``"<label>/learning_rate"`` (and ``"<label>/<name>"`` for each of
    ``hyperparameters``), the label being the optimizer's ``name`` (tf_keras
    names optimizers after their class: ``"SGD"``, ``"Adam"``) or the keys of
    ``optimizers``. tf_keras's own callbacks log the *next* step's rate, as
    ``lr`` (``ReduceLROnPlateau``, ``LearningRateScheduler``) or
    ``learning_rate`` (``TensorBoard``); see docs/keras2.md. Per-update and
    per-variable diagnostics are Keras 3 only: ``diagnostics=True`` or
    ``"per_variable"`` raises an error that says so, both a ``TypeError``
    and a ``NotImplementedError``. Put it before
    ``CSVLogger`` and ``TensorBoard`` in the callback list.

    Args:
        interval: ``"epoch"``, ``"batch"`` (after every call of the train
            function) or a positive int ``N`` (every ``N`` steps).
        hyperparameters: Names of other numeric hyperparameters to log, e.g.
            ``("momentum",)``: any numeric entry of the optimizer's config.
        optimizers: ``{label: optimizer}`` for optimizers held outside
            ``model.optimizer``; by default ``model.optimizer``.

    Raises:
        ValueError: an argument is invalid (the message says what is valid).
        TypeError: an optimizer is not introspectable (the message says how
            to make it so).

    Examples:
        >>> import numpy as np, tf_keras
        >>> from introspect_opt import tf_keras as introspect_tfk
        >>> schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
        >>> model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
        >>> model.compile(introspect_tfk.IntrospectableSGD(schedule), loss="mse")
        >>> history = model.fit(
        ...     np.ones((8, 2)), np.ones((8, 1)), batch_size=4, epochs=2, verbose=0,
        ...     callbacks=[introspect_tfk.LearningRateLogger()],
        ... )
        >>> [round(r, 6) for r in history.history["SGD/learning_rate"]]  # s(1), s(3)
        [0.05, 0.0125]
    """

    def __init__(
        self,
        interval: str | int = "epoch",
        *,
        hyperparameters: Iterable[str] | None = (),
        optimizers: Mapping[str, Any] | None = None,
        **removed: Any,
    ) -> None:
        super().__init__()
        if isinstance(removed.get("diagnostics"), str) and removed["diagnostics"] == "per_variable":
            raise KerasThreeOnlyArgument(
                "LearningRateLogger(diagnostics='per_variable') is Keras 3 only: per-variable "
                "diagnostics need a Keras 3 optimizer; tf_keras optimizers record the applied "
                "rate, not per-variable (or per-update) diagnostics."
            )
        if "diagnostics" in removed:
            raise KerasThreeOnlyArgument(
                "LearningRateLogger(diagnostics=...) is Keras 3 only: tf_keras optimizers "
                "record the applied rate, not per-update diagnostics."
            )
        self._core = LoggerCore(_TfKeras, interval, hyperparameters, False, optimizers, removed)

    @property
    def interval(self) -> str | int:
        """When it reads: ``"epoch"``, ``"batch"`` or every N steps."""
        interval: str | int = self._core.interval
        return interval

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._core.train_begin(self.model)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._core.epoch_begin()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._core.reads_batches:
            self._core.batch_end(self.model, batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._core.epoch_end(self.model, logs)
