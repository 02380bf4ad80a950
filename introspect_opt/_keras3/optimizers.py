"""The ready-made introspectable optimizers."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import keras

from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.factory import introspectable, register
from introspect_opt._keras3.mixin import IntrospectableOptimizer

if TYPE_CHECKING:
    from keras.optimizers import SGD as _SGDBase
else:  # the fused torch variant on the torch backend, for bit-identical updates
    _SGDBase = _keras_private.backend_class(keras.optimizers.SGD)


@keras.saving.register_keras_serializable(package="introspect_opt")
class IntrospectableSGD(IntrospectableOptimizer, _SGDBase):
    """``keras.optimizers.SGD`` that records the learning rate each update applied.

    A drop-in replacement: same constructor, same config, bit-identical
    variable updates, and files interchangeable with plain ``SGD`` in both
    directions. Adds :attr:`current_learning_rate`, the rate the last applied
    update used (``optimizer.learning_rate`` is the rate the *next* update
    will use).

    Args:
        learning_rate (float | LearningRateSchedule | Callable): A float, a
            ``keras.optimizers.schedules.LearningRateSchedule``, or a
            zero-argument callable returning the rate. Defaults to ``0.01``.
        momentum (float): Float in ``[0, 1]``. Defaults to ``0.0``.
        nesterov (bool): Whether to apply Nesterov momentum. Defaults to
            ``False``.
        weight_decay (float | None): If set, weight decay is applied.
        clipnorm (float | None): Clip each gradient to this norm.
        clipvalue (float | None): Clip each gradient to this value.
        global_clipnorm (float | None): Clip all gradients to this global norm.
        use_ema (bool): Whether to keep an exponential moving average of the
            weights.
        ema_momentum (float): The EMA momentum. Defaults to ``0.99``.
        ema_overwrite_frequency (int | None): Overwrite the weights with their
            moving average every this many iterations.
        loss_scale_factor (float | None): Scale the loss by this factor and the
            gradients by its inverse.
        gradient_accumulation_steps (int | None): ``>= 2``: update the
            variables every this many steps with the averaged gradients.
        name (str | None): String name of the optimizer.

    Examples:
        >>> import numpy as np, keras, introspect_opt
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.1, 0.01])
        >>> model.compile(introspect_opt.IntrospectableSGD(schedule), loss="mse")
        >>> x, y = np.ones((12, 4)), np.ones((12, 1))
        >>> _ = model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 3 updates
        >>> int(model.optimizer.iterations)
        3
        >>> round(float(model.optimizer.current_learning_rate), 6)  # update 3 applied s(2)
        0.1
        >>> round(float(model.optimizer.learning_rate), 6)  # update 4 will apply s(3)
        0.01
    """


IntrospectableSGD._introspect_base = keras.optimizers.SGD
IntrospectableSGD.__signature__ = inspect.signature(keras.optimizers.SGD)
register(keras.optimizers.SGD, IntrospectableSGD)

# One line per optimizer class that keras.optimizers exports (tests/test_optimizers.py
# derives the list from the installed Keras and fails on any class missing here).
# Type checkers and editors see each as a subclass of IntrospectableOptimizer and
# the Keras class, so `current_learning_rate` is known on its instances.
if TYPE_CHECKING:

    class IntrospectableAdadelta(IntrospectableOptimizer, keras.optimizers.Adadelta):
        """``keras.optimizers.Adadelta`` that records the learning rate each update applied."""

    class IntrospectableAdafactor(IntrospectableOptimizer, keras.optimizers.Adafactor):
        """``keras.optimizers.Adafactor`` that records the learning rate each update applied."""

    class IntrospectableAdagrad(IntrospectableOptimizer, keras.optimizers.Adagrad):
        """``keras.optimizers.Adagrad`` that records the learning rate each update applied."""

    class IntrospectableAdam(IntrospectableOptimizer, keras.optimizers.Adam):
        """``keras.optimizers.Adam`` that records the learning rate each update applied."""

    class IntrospectableAdamW(IntrospectableOptimizer, keras.optimizers.AdamW):
        """``keras.optimizers.AdamW`` that records the learning rate each update applied."""

    class IntrospectableAdamax(IntrospectableOptimizer, keras.optimizers.Adamax):
        """``keras.optimizers.Adamax`` that records the learning rate each update applied."""

    class IntrospectableFtrl(IntrospectableOptimizer, keras.optimizers.Ftrl):
        """``keras.optimizers.Ftrl`` that records the learning rate each update applied."""

    class IntrospectableLamb(IntrospectableOptimizer, keras.optimizers.Lamb):
        """``keras.optimizers.Lamb`` that records the learning rate each update applied."""

    class IntrospectableLion(IntrospectableOptimizer, keras.optimizers.Lion):
        """``keras.optimizers.Lion`` that records the learning rate each update applied."""

    class IntrospectableMuon(IntrospectableOptimizer, keras.optimizers.Muon):
        """``keras.optimizers.Muon`` that records the learning rate each update applied."""

    class IntrospectableNadam(IntrospectableOptimizer, keras.optimizers.Nadam):
        """``keras.optimizers.Nadam`` that records the learning rate each update applied."""

    class IntrospectableRMSprop(IntrospectableOptimizer, keras.optimizers.RMSprop):
        """``keras.optimizers.RMSprop`` that records the learning rate each update applied."""

    class IntrospectableScheduleFreeAdamW(
        IntrospectableOptimizer, keras.optimizers.ScheduleFreeAdamW
    ):
        """``keras.optimizers.ScheduleFreeAdamW`` that records the rate each update applied."""

else:
    IntrospectableAdadelta = introspectable(keras.optimizers.Adadelta)
    IntrospectableAdafactor = introspectable(keras.optimizers.Adafactor)
    IntrospectableAdagrad = introspectable(keras.optimizers.Adagrad)
    IntrospectableAdam = introspectable(keras.optimizers.Adam)
    IntrospectableAdamW = introspectable(keras.optimizers.AdamW)
    IntrospectableAdamax = introspectable(keras.optimizers.Adamax)
    IntrospectableFtrl = introspectable(keras.optimizers.Ftrl)
    IntrospectableLamb = introspectable(keras.optimizers.Lamb)
    IntrospectableLion = introspectable(keras.optimizers.Lion)
    IntrospectableMuon = introspectable(keras.optimizers.Muon)
    IntrospectableNadam = introspectable(keras.optimizers.Nadam)
    IntrospectableRMSprop = introspectable(keras.optimizers.RMSprop)
    IntrospectableScheduleFreeAdamW = introspectable(keras.optimizers.ScheduleFreeAdamW)
