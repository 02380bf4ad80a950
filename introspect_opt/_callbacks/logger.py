"""``LearningRateLogger``: the applied rate, in Keras's logs, at an interval."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import keras

from introspect_opt._common.logger import (
    LoggerCore,
    check_optimizers,
    is_integer,
    retrace,
    tracked_optimizers,
)
from introspect_opt._common.names import STATE_ATTRIBUTE
from introspect_opt._features import diagnostics as _diagnostics
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.host import host_float
from introspect_opt._keras3.mixin import IntrospectableOptimizer
from introspect_opt._keras3.resolve import (
    describe_optimizer,
    label,
    resolve_multi_optimizer,
    resolve_optimizer,
    unwrap,
)
from introspect_opt._keras3.state import AppliedRateState

__all__ = ["Keras3", "LearningRateLogger", "is_integer", "label", "retrace"]


class Keras3:
    """How the logger finds and reads Keras 3 optimizers (tf_keras has its own)."""

    @staticmethod
    def check_optimizers(optimizers: Any) -> dict[str, Any] | None:
        return check_optimizers(optimizers, unwrap, IntrospectableOptimizer, "introspect_opt")

    @staticmethod
    def track(callback: str, model: Any, given: dict[str, Any] | None) -> list[Any]:
        if given is None:
            # A MultiOptimizer: each sub-optimizer under its own label.
            try:
                subs = resolve_multi_optimizer(model, callback)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{callback} cannot read this model's rate: {error}") from None
            if subs is not None:
                wrapped = unwrap(model.optimizer)[1]
                return [(name, optimizer, wrapped) for name, optimizer in subs.items()]
        return tracked_optimizers(
            callback, model, given, resolve_optimizer, unwrap, Keras3.default_name
        )

    @staticmethod
    def default_name(optimizer_class: type) -> str | None:
        return _keras_private.unnumbered_default_name(optimizer_class)

    @staticmethod
    def applied_rate(optimizer: Any) -> float:
        return _applied_rate(optimizer)

    @staticmethod
    def host_float(value: Any) -> float:
        return host_float(value)

    @staticmethod
    def describe(optimizer: Any) -> str:
        return describe_optimizer(optimizer)

    @staticmethod
    def sync_training_state(model: Any) -> None:
        _keras_private.sync_training_state(model)

    @staticmethod
    def raw_steps(optimizer: Any) -> int:
        return int(host_float(_keras_private.raw_step_counter(optimizer)))

    @staticmethod
    def enable_diagnostics(optimizer: Any, per_variable: bool = False) -> bool:
        """What ``record_diagnostics(optimizer, per_variable)`` does; whether it created variables.

        (The caller traces ``fit``'s train function again when it did.)
        """
        return _diagnostics.enable(optimizer, per_variable)

    @staticmethod
    def diagnostics(optimizer: Any) -> dict[str, float]:
        return _diagnostics.read(optimizer)

    @staticmethod
    def per_variable_diagnostics(optimizer: Any) -> dict[str, dict[str, float]]:
        return _diagnostics.read_per_variable(optimizer)


class LearningRateLogger(keras.callbacks.Callback):
    """Writes the learning rate each update applied into Keras's logs.

    With this callback, ``History``, ``CSVLogger``, the progress bar and
    Keras's ``TensorBoard`` show the rate the updates actually used (not the
    next step's, which ``optimizer.learning_rate`` shows), with no code of
    yours. Each read is a few scalar device reads per interval.

    Keys are ``"<label>/<quantity>"``. The label is the optimizer's ``name``
    without the counter Keras appends to default names (``sgd``, not
    ``sgd_1``; the inner optimizer's under a ``LossScaleOptimizer``; each
    sub-optimizer's under a ``keras.optimizers.MultiOptimizer``, e.g.
    ``adam/learning_rate`` and ``sgd/learning_rate``), or the
    keys of ``optimizers``; the quantities are
    ``learning_rate``, each name in ``hyperparameters``, and with
    ``diagnostics=True`` ``gradient_norm``, ``update_norm``,
    ``update_to_weight_ratio`` and, under loss scaling, ``skipped_steps``;
    with ``diagnostics="per_variable"`` also ``update_to_weight_ratio/min``,
    ``/median`` and ``/max``, and the same three of
    ``effective_learning_rate``, over the variables the last update changed.
    Put it before ``CSVLogger``, ``TensorBoard`` and other loggers in the
    callback list, so they see its keys. Keras's own ``learning_rate`` key
    (the next step's rate, written by ``LearningRateScheduler`` and
    ``ReduceLROnPlateau``) is left alone. To send every step's rate to
    TensorBoard, see ``RateHistoryToTensorBoard``.

    Args:
        interval: When to read: ``"epoch"`` (into the epoch logs), ``"batch"``
            (into the batch logs after every call of the train function, i.e.
            every ``steps_per_execution`` steps) or a positive int ``N`` (into
            the batch logs every ``N`` steps). Epoch logs always get the value
            at the end of the epoch.
        hyperparameters: Names of other scalar hyperparameters to log, e.g.
            ``("momentum", "weight_decay")``: any numeric entry of the
            optimizer's ``get_config()``. An option that is off (``None``)
            logs as ``nan``, except ``weight_decay``, which logs ``0.0``.
        diagnostics: ``True``: also record and log, per update, on the
            device: global gradient norm, update norm, update-to-weight ratio;
            and the steps a ``LossScaleOptimizer`` skipped since the previous
            read (epoch logs: in the epoch). ``"per_variable"``: that, and
            also record each variable's values (``record_diagnostics(optimizer,
            per_variable=True)``) and log their minimum, median and maximum
            over the variables, leaving out variables the last update did not
            change (``nan`` when no variable has a value); each variable's
            own values go to TensorBoard with ``DiagnosticsToTensorBoard``.
            Either way the optimizer applies each update one variable at a
            time, three reductions per variable and no copy of the model
            (see ``record_diagnostics`` for the cost).
        optimizers: ``{label: optimizer}`` for models that train with several
            optimizers held outside ``model.optimizer`` (e.g. a GAN); by
            default ``model.optimizer``.

    Raises:
        ValueError: an argument is invalid (the message says what is valid),
            or, at the start of ``fit``, two sub-optimizers of the model's
            ``MultiOptimizer`` have the same label (give them distinct ``name=``).
        TypeError: an optimizer in ``optimizers`` is not introspectable, or,
            at the start of ``fit``, the model's (or a sub-optimizer of its
            ``MultiOptimizer``) is not (the message says how to make it so).

    Examples:
        >>> import keras, numpy as np, introspect_opt
        >>> schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(introspect_opt.IntrospectableSGD(schedule), loss="mse")
        >>> history = model.fit(
        ...     np.ones((8, 2)), np.ones((8, 1)), batch_size=4, epochs=2, verbose=0,
        ...     callbacks=[introspect_opt.LearningRateLogger()],
        ... )
        >>> [round(r, 6) for r in history.history["sgd/learning_rate"]]  # s(1), s(3)
        [0.05, 0.0125]
    """

    def __init__(
        self,
        interval: str | int = "epoch",
        *,
        hyperparameters: Iterable[str] | None = (),
        diagnostics: bool | Literal["per_variable"] = False,
        optimizers: Mapping[str, Any] | None = None,
        **removed: Any,
    ) -> None:
        super().__init__()
        self._core = LoggerCore(Keras3, interval, hyperparameters, diagnostics, optimizers, removed)
        if not self._core.reads_batches:
            # No batch-level work: keep Keras's default (no-op) hook, so that
            # Keras may still dispatch batch callbacks asynchronously.
            self.on_train_batch_end = super().on_train_batch_end  # type: ignore[method-assign]

    @property
    def interval(self) -> str | int:
        """When it reads: ``"epoch"``, ``"batch"`` or every N steps."""
        interval: str | int = self._core.interval
        return interval

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        """The other hyperparameters it logs."""
        return self._core.hyperparameters

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._core.train_begin(self.model)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._core.epoch_begin()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._core.batch_end(self.model, batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._core.epoch_end(self.model, logs)


def _applied_rate(optimizer: Any) -> float:
    """``float(optimizer.current_learning_rate)``, in two variable reads when cached.

    The property evaluates a comparison and a branch eagerly, several times
    the cost of reading the two variables it compares, and a logger reads it
    at every interval.
    """
    state = optimizer.__dict__.get(STATE_ATTRIBUTE)
    if isinstance(state, AppliedRateState) and state.is_current(optimizer):
        return host_float(state.applied_learning_rate)
    return host_float(optimizer.current_learning_rate)
