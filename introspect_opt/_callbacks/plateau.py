"""``ScaleLearningRateOnPlateau``: Keras's ``ReduceLROnPlateau``, for schedules too.

It drives the plateau multiplier of ``_features.plateau`` (a feature of the
optimizer's state, saved with it): the callback holds only the plateau logic.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import keras
import numpy as np

from introspect_opt._callbacks.logger import is_integer, label, retrace
from introspect_opt._features.plateau import (
    MULTIPLIER,
    ScaledLearningRate,
    multiplier,
    rebind,
    set_multiplier,
)
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.resolve import resolve_optimizer


class ScaleLearningRateOnPlateau(keras.callbacks.Callback):
    """Scales the learning rate, schedule included, down when a metric stalls.

    Keras's ``ReduceLROnPlateau`` raises ``TypeError`` when the rate is a
    schedule, because it assigns a new float rate. This callback has the same
    arguments and plateau logic, but scales whatever the rate is: a schedule
    keeps its shape, multiplied by a multiplier kept in the optimizer's state
    (see :class:`ScaledLearningRate`); a float rate is scaled in place, as
    Keras would. The multiplier is saved and restored with the optimizer
    (every checkpoint format), is part of ``current_learning_rate`` and of
    ``optimizer.learning_rate``, and is logged as
    ``"<label>/learning_rate_multiplier"`` (the label as in
    ``LearningRateLogger``). Put it before ``ModelCheckpoint`` and
    ``BackupAndRestore`` in the callback list, so that what they save at the
    end of an epoch holds the multiplier chosen at the end of that epoch.

    Args:
        monitor: The metric to watch, e.g. ``"val_loss"``.
        factor: The multiplier is multiplied by this on a plateau; in (0, 1).
        patience: Epochs without improvement before scaling down.
        verbose: 1 to print a message when scaling down.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (from the metric's name).
        min_delta: The smallest change that counts as an improvement.
        cooldown: Epochs to wait after scaling down before counting again.
        min_multiplier: A lower bound on the multiplier, in [0, 1).

    Raises:
        ValueError: an argument is invalid (the message says what is valid).
        TypeError: at the start of ``fit``, the model's optimizer is not
            introspectable (the message says how to make it so).

    Examples:
        >>> import keras, numpy as np, introspect_opt
        >>> schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=100)
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(introspect_opt.IntrospectableSGD(schedule), loss="mse")
        >>> plateau = introspect_opt.ScaleLearningRateOnPlateau(
        ...     "loss", factor=0.5, patience=0, min_delta=1e9  # every epoch is a plateau
        ... )
        >>> history = model.fit(
        ...     np.ones((4, 2)), np.ones((4, 1)), epochs=3, verbose=0, callbacks=[plateau]
        ... )
        >>> history.history["sgd/learning_rate_multiplier"]
        [1.0, 0.5, 0.25]
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_multiplier: float = 0.0,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if "min_lr" in unknown:
            raise TypeError(
                "ScaleLearningRateOnPlateau has no min_lr: it scales the rate, schedule "
                "included, so its floor is a fraction of it, min_multiplier (e.g. "
                "min_multiplier=0.01 for at least 1% of the scheduled rate)."
            )
        if unknown:
            raise TypeError(
                f"ScaleLearningRateOnPlateau got unexpected keyword arguments {sorted(unknown)}."
            )
        checks = (
            ("monitor", monitor, isinstance(monitor, str) and bool(monitor), "a metric name"),
            ("factor", factor, _real(factor) and 0 < factor < 1, "a number in (0, 1)"),
            ("patience", patience, _count(patience), "an int >= 0"),
            ("verbose", verbose, _count(verbose), "0 or 1"),
            ("mode", mode, mode in ("auto", "min", "max"), '"auto", "min" or "max"'),
            ("min_delta", min_delta, _real(min_delta) and min_delta >= 0, "a number >= 0"),
            ("cooldown", cooldown, _count(cooldown), "an int >= 0"),
            (
                "min_multiplier",
                min_multiplier,
                _real(min_multiplier) and 0 <= min_multiplier < 1,
                "a number in [0, 1)",
            ),
        )
        for argument, value, ok, valid in checks:
            if not ok:
                raise ValueError(f"{argument} must be {valid}; received {value!r}.")
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = patience
        self.verbose = verbose
        self.min_delta = float(min_delta)
        self.cooldown = cooldown
        self.min_multiplier = float(min_multiplier)
        if mode == "auto":
            mode = "max" if "acc" in monitor or monitor.endswith("auc") else "min"
        self.mode = mode
        self._optimizer: Any = None
        self._reset()

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def _improved(self, current: float) -> bool:
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        try:
            self._optimizer = resolve_optimizer(self.model, "ScaleLearningRateOnPlateau")
        except TypeError as error:
            raise TypeError(
                f"ScaleLearningRateOnPlateau cannot scale this model's rate: {error}"
            ) from None
        self._label = label(self._optimizer)
        state = self._optimizer._ensure_introspection_state()
        if state.enable(self._optimizer, MULTIPLIER.name):
            retrace(self.model)  # a train function traced before reads the old rate
        elif not state.has_variables and not isinstance(
            _keras_private.learning_rate_source(self._optimizer), keras.Variable
        ):
            # Not built yet: wrap the schedule now, so that whatever traces the
            # first step (and `optimizer.learning_rate`) already sees it.
            source = _keras_private.learning_rate_source(self._optimizer)
            if not isinstance(source, ScaledLearningRate):
                self._optimizer.learning_rate = ScaledLearningRate(source)
        self._reset()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        optimizer = self._optimizer
        if rebind(optimizer):  # a new schedule was assigned since: scale it from 1
            retrace(self.model)
        current_multiplier = multiplier(optimizer)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"ScaleLearningRateOnPlateau: the metric '{self.monitor}' is not in "
                f"the logs (available: {sorted(logs)}); the rate is left as it is.",
                stacklevel=2,
            )
        else:
            current = float(current)
            if self.cooldown_counter > 0:
                self.cooldown_counter -= 1
                self.wait = 0
            if self._improved(current):
                self.best = current
                self.wait = 0
            elif self.cooldown_counter <= 0:
                self.wait += 1
                # As Keras's ReduceLROnPlateau: `>=`, and the floor compared
                # in float32, the variable's dtype.
                floor = float(np.float32(self.min_multiplier))
                if self.wait >= self.patience and current_multiplier > floor:
                    set_multiplier(optimizer, max(current_multiplier * self.factor, floor))
                    current_multiplier = multiplier(optimizer)
                    if self.verbose:
                        print(
                            f"\nEpoch {epoch + 1}: ScaleLearningRateOnPlateau scaled the "
                            f"learning rate of '{optimizer.name}' by {self.factor} "
                            f"(multiplier now {current_multiplier:.6g})."
                        )
                    self.cooldown_counter = self.cooldown
                    self.wait = 0
        logs[f"{self._label}/learning_rate_multiplier"] = current_multiplier


def _real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(float(value))
    )


def _count(value: Any) -> bool:
    return is_integer(value) and int(value) >= 0
