"""Opt-in feature: plateau reduction that works on schedules too.

Keras's ``ReduceLROnPlateau`` assigns a new float rate, which is impossible
(a ``TypeError``) when the rate is a schedule. ``ScaleLearningRateOnPlateau``
scales whatever the rate is by a multiplier kept in the optimizer's state
(``learning_rate_multiplier``, saved and restored with it in every format):

* a schedule or callable rate is wrapped, through Keras's public
  ``learning_rate`` setter, in :class:`ScaledLearningRate`, a schedule that
  multiplies it by the multiplier variable. Keras then evaluates the scaled
  rate wherever it reads ``optimizer.learning_rate`` (the update, weight
  decay, logs), and so does ``current_learning_rate``. The wrapper's config
  carries the schedule and the multiplier, so a config round trip applies the
  same rate.
* a float rate is a variable already: it is scaled in place, as
  ``ReduceLROnPlateau`` would, and the multiplier records by how much.

This needs no hook in the optimizer: the multiplier is a feature of the
state (``_state.Feature``) and the scaling is a schedule.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from introspect_opt._callbacks.logger import is_integer, label, retrace
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3 import dormant as _dormant
from introspect_opt._keras3.resolve import resolve_optimizer
from introspect_opt._keras3.state import (
    AppliedRateState,
    Entries,
    Feature,
    host_float,
    register_feature,
)

KEY = "learning_rate_multiplier"


@keras.saving.register_keras_serializable(package="introspect_opt")
class ScaledLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate (schedule or callable) times a multiplier in optimizer state.

    ``ScaleLearningRateOnPlateau`` wraps an optimizer's schedule in one; you
    rarely create it yourself. Until the optimizer holding it is built, the
    multiplier is the number given here; from then on it is the optimizer's
    ``learning_rate_multiplier`` variable, saved with the optimizer.

    Args:
        learning_rate: A ``LearningRateSchedule`` or a zero-argument callable.
        multiplier: The multiplier to start from. Defaults to ``1.0``.

    Examples:
        >>> import keras, introspect_opt
        >>> schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
        >>> scaled = introspect_opt.ScaledLearningRate(schedule, multiplier=0.5)
        >>> round(float(scaled(2)), 6)  # 0.5 * s(2)
        0.0125
    """

    def __init__(self, learning_rate: Any, multiplier: float = 1.0) -> None:
        if isinstance(learning_rate, ScaledLearningRate):
            learning_rate = learning_rate.inner
        if isinstance(learning_rate, keras.Variable) or not callable(learning_rate):
            raise TypeError(
                "ScaledLearningRate expects a LearningRateSchedule or a zero-argument "
                f"callable; received {learning_rate!r}. A float rate needs no "
                "wrapper: scale it with `optimizer.learning_rate = new_rate`."
            )
        if isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real):
            raise TypeError(
                f"ScaledLearningRate(multiplier=...) must be a number >= 0; received "
                f"{multiplier!r} (type {type(multiplier).__name__})."
            )
        if not math.isfinite(float(multiplier)) or multiplier < 0:
            raise ValueError(
                f"ScaledLearningRate(multiplier=...) must be a finite number >= 0; "
                f"received {multiplier!r}."
            )
        self.inner: Any = learning_rate
        self.initial_multiplier: float = float(multiplier)
        self.variable: Any = None  # the optimizer's multiplier, once bound

    def __call__(self, step: Any) -> Any:
        if isinstance(self.inner, keras.optimizers.schedules.LearningRateSchedule):
            rate = ops.convert_to_tensor(self.inner(step))
        else:
            rate = ops.convert_to_tensor(self.inner())
        variable = self.variable
        if variable is None:
            return _scaled(rate, ops.convert_to_tensor(self.initial_multiplier, rate.dtype))
        if _dormant.reshapable(variable):
            # Dormant (empty) until a multiplier is set or restored: the rate as is.
            # (XLA compiles both branches for the variable's shape: the product
            # of its elements is the scalar itself, and 1 while it is empty.)
            def scaled() -> Any:
                return _scaled(rate, ops.prod(ops.cast(variable, rate.dtype)))

            return _dormant.when_on(variable, scaled, lambda: rate)
        return _scaled(rate, ops.cast(variable, rate.dtype))

    @property
    def multiplier(self) -> float:
        """The multiplier now (the variable's value once bound)."""
        return self.initial_multiplier if self.variable is None else _value(self.variable)

    def get_config(self) -> dict[str, Any]:
        return {
            "learning_rate": keras.saving.serialize_keras_object(self.inner),
            "multiplier": self.multiplier,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ScaledLearningRate:
        config = dict(config)
        config["learning_rate"] = keras.saving.deserialize_keras_object(config["learning_rate"])
        return cls(**config)


def _scaled(rate: Any, scale: Any) -> Any:
    # A multiply by exactly 1 can still change how XLA fuses the step; the
    # select keeps the unscaled rate's bits, and weights bit-identical.
    return ops.where(ops.equal(scale, 1), rate, ops.multiply(rate, scale))


def _value(variable: Any) -> float:
    """A multiplier variable's value on the host; 1 while dormant (see _dormant)."""
    if _dormant.reshapable(variable) and not _dormant.is_on(variable):
        return 1.0
    return host_float(variable)


class _Multiplier(Feature):
    name = "multiplier"
    keys = (KEY,)
    # Training state: the rate depends on it.
    created_by_files: ClassVar[bool] = True

    def wanted_by(self, optimizer: Any) -> dict[str, Any] | None:
        source = _keras_private.learning_rate_source(optimizer)
        if not isinstance(source, ScaledLearningRate):
            return None
        # One that create_dormant bound stays dormant at multiplier 1.
        dormant = _dormant.reshapable(source.variable) and source.initial_multiplier == 1.0
        return None if dormant else {}

    def adjust_config(self, optimizer: Any, config: dict[str, Any]) -> None:
        # A wrapper at multiplier 1 (dormant at build, see _dormant, or not yet
        # scaled) changes no rate: the config holds the rate as it was given.
        source = _keras_private.learning_rate_source(optimizer)
        if isinstance(source, ScaledLearningRate) and source.multiplier == 1.0:
            config["learning_rate"] = keras.saving.serialize_keras_object(source.inner)

    def create_dormant(self, optimizer: Any, state: AppliedRateState) -> None:
        source = _keras_private.learning_rate_source(optimizer)
        if isinstance(source, keras.Variable):
            return  # a float rate is scaled in place: steps read it already
        if not isinstance(source, ScaledLearningRate):
            # Wrapping a plain schedule behind a dormant gate changes how
            # TensorFlow fuses the step (weights then differ from plain SGD's in
            # the last bit, measured): bit-identity first. A multiplier loaded
            # after the step was traced acts once the step is traced again.
            return
        rate_var, _ = state.core()  # type: ignore[misc]
        variable = _dormant.make(optimizer, KEY, rate_var.dtype, None)
        state.learning_rate_multiplier = variable
        if not isinstance(source, ScaledLearningRate):
            source = ScaledLearningRate(source)
            optimizer.learning_rate = source  # Keras's public setter
        source.variable = variable

    def create(self, optimizer: Any, state: AppliedRateState, **options: Any) -> None:
        source = _keras_private.learning_rate_source(optimizer)
        initial = source.initial_multiplier if isinstance(source, ScaledLearningRate) else 1.0
        rate_var, _ = state.core()  # type: ignore[misc]
        variable = state.new_variable(optimizer, KEY, np.asarray(initial, rate_var.dtype))
        state.learning_rate_multiplier = variable
        if isinstance(source, keras.Variable):
            return  # a float rate is scaled in place; the multiplier records it
        if not isinstance(source, ScaledLearningRate):
            source = ScaledLearningRate(source, initial)
            optimizer.learning_rate = source  # Keras's public setter
        source.variable = variable

    def queued(self, optimizer: Any, entries: Entries) -> None:
        # Before the build: `learning_rate` shows the file's multiplier at once
        # (a float rate arrives scaled in the rate variable itself).
        source = _keras_private.learning_rate_source(optimizer)
        if isinstance(source, keras.Variable):
            return
        value = float(entries[KEY])
        if isinstance(source, ScaledLearningRate) and source.variable is None:
            source.initial_multiplier = value
        elif not isinstance(source, ScaledLearningRate):
            optimizer.learning_rate = ScaledLearningRate(source, value)

    def assign(self, optimizer: Any, state: AppliedRateState, entries: Entries | None) -> None:
        # A file without a multiplier was written by an optimizer training at 1.
        state.learning_rate_multiplier.assign(1.0 if entries is None else entries[KEY])

    def check(self, entries: Entries) -> str | None:
        value = entries[KEY]
        # Finite in float32 too: a larger float64 would be assigned as inf.
        with np.errstate(over="ignore"):
            finite = value.shape == () and bool(np.isfinite(value.astype(np.float32)))
        if not finite or value < 0:
            return f"{KEY} is {value!r}, not a finite number >= 0"
        return None


MULTIPLIER = register_feature(_Multiplier())


def rebind(optimizer: Any) -> bool:
    """Wraps a rate source assigned since the multiplier was bound, at multiplier 1.

    ``optimizer.learning_rate = new_schedule`` (a warm restart, say) replaces
    the scaled schedule: the new one starts unscaled, and plateau scaling goes
    on from there. Returns whether it wrapped one (functions traced before
    read the old one).
    """
    state = optimizer.__dict__.get("_introspection_state")
    variable = None if state is None else state.learning_rate_multiplier
    source = _keras_private.learning_rate_source(optimizer)
    if variable is None or isinstance(source, keras.Variable):
        return False
    if isinstance(source, ScaledLearningRate) and source.variable is variable:
        return False
    with _keras_private.eager_scope():
        variable.assign(1.0)
    wrapper = source if isinstance(source, ScaledLearningRate) else ScaledLearningRate(source)
    wrapper.variable = variable
    optimizer.learning_rate = wrapper
    return True


def multiplier(optimizer: Any) -> float:
    """The current multiplier (1.0 when the optimizer has none)."""
    state = optimizer.__dict__.get("_introspection_state")
    variable = None if state is None else state.learning_rate_multiplier
    if variable is not None:
        return _value(variable)
    source = _keras_private.learning_rate_source(optimizer)
    return source.multiplier if isinstance(source, ScaledLearningRate) else 1.0


def set_multiplier(optimizer: Any, value: float) -> None:
    """Sets the multiplier; the next update applies it."""
    rebind(optimizer)
    state = optimizer._ensure_introspection_state()
    variable = state.learning_rate_multiplier
    old = multiplier(optimizer)
    source = _keras_private.learning_rate_source(optimizer)
    with _keras_private.eager_scope():
        if isinstance(source, keras.Variable) and old > 0:
            # The float rate itself is what the update reads.
            rate = host_float(source)
            optimizer.learning_rate = rate * (value / old)
        if variable is not None:
            variable.assign(value)
        elif isinstance(source, ScaledLearningRate):
            source.initial_multiplier = float(value)  # not built yet


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
