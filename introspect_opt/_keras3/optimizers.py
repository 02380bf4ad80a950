"""The ready-made introspectable optimizers: one class statement per Keras optimizer.

The table below is the only list. For an optimizer a new Keras release adds,
add its line to it,
``class Introspectable<Name>(IntrospectableOptimizer, _keras.optimizers.<Name>): ...``:
type checkers read that statement (a subclass of both ``IntrospectableOptimizer``
and the Keras class); at run time the loop after the table puts in its place
the class ``introspectable(keras.optimizers.<Name>)`` makes, registered for
Keras serialization (``factory.ready_made``), and ``__all__``, hence the
package's exports, follows. ``tests/test_optimizers.py`` fails, naming this
file, when the installed Keras exports an optimizer missing here.

Every other name here is private (underscored): type checkers, which cannot
run the derivation of ``__all__``, export the module's public names, the
classes.
"""

import typing as _typing

import keras as _keras

from introspect_opt._keras3.factory import ready_made as _ready_made
from introspect_opt._keras3.mixin import IntrospectableOptimizer


class IntrospectableSGD(IntrospectableOptimizer, _keras.optimizers.SGD):
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


# fmt: off
class IntrospectableAdadelta(IntrospectableOptimizer, _keras.optimizers.Adadelta): ...
class IntrospectableAdafactor(IntrospectableOptimizer, _keras.optimizers.Adafactor): ...
class IntrospectableAdagrad(IntrospectableOptimizer, _keras.optimizers.Adagrad): ...
class IntrospectableAdam(IntrospectableOptimizer, _keras.optimizers.Adam): ...
class IntrospectableAdamW(IntrospectableOptimizer, _keras.optimizers.AdamW): ...
class IntrospectableAdamax(IntrospectableOptimizer, _keras.optimizers.Adamax): ...
class IntrospectableFtrl(IntrospectableOptimizer, _keras.optimizers.Ftrl): ...
class IntrospectableLamb(IntrospectableOptimizer, _keras.optimizers.Lamb): ...
class IntrospectableLion(IntrospectableOptimizer, _keras.optimizers.Lion): ...
class IntrospectableMuon(IntrospectableOptimizer, _keras.optimizers.Muon): ...
class IntrospectableNadam(IntrospectableOptimizer, _keras.optimizers.Nadam): ...
class IntrospectableRMSprop(IntrospectableOptimizer, _keras.optimizers.RMSprop): ...
class IntrospectableScheduleFreeAdamW(IntrospectableOptimizer, _keras.optimizers.ScheduleFreeAdamW): ...  # noqa: E501
# fmt: on

# Each statement above becomes the class introspectable() makes for its Keras class.
_TABLE = sorted(n for n, v in globals().items() if isinstance(v, type) and v.__module__ == __name__)
for _name in _TABLE:
    globals()[_name] = _ready_made(globals()[_name])
del _name

if not _typing.TYPE_CHECKING:  # type checkers export the module's public names: the classes
    __all__ = _TABLE
