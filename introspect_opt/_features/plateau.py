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
state (``_keras3.features.Feature``) and the scaling is a schedule. The
callback that drives it is ``_callbacks.plateau``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from introspect_opt._common.names import STATE_ATTRIBUTE
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3 import dormant as _dormant
from introspect_opt._keras3.features import Entries, Feature, register_feature
from introspect_opt._keras3.host import host_float
from introspect_opt._keras3.state import AppliedRateState

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
    """A multiplier variable's value on the host; 1 while dormant (see _keras3.dormant)."""
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

    def assign(
        self,
        optimizer: Any,
        state: AppliedRateState,
        entries: Entries | None,
        owners: dict[int, int] | None = None,
    ) -> None:
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
    state = optimizer.__dict__.get(STATE_ATTRIBUTE)
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
    state = optimizer.__dict__.get(STATE_ATTRIBUTE)
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
