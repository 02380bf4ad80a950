"""The ready-made introspectable tf_keras optimizers, one per class tf_keras exports.

New optimizers (``tf_keras.optimizers.*``, which ``tf.keras.optimizers.*`` is
under ``TF_USE_LEGACY_KERAS=1``) are ``Introspectable<Name>``; legacy ones
(``tf_keras.optimizers.legacy.*``) are ``IntrospectableLegacy<Name>``. Each
is its tf_keras class with the cached-rate mixin in front: same constructor,
config, default name and variables, bit-identical updates, registered for
tf_keras serialization as ``introspect_opt>Introspectable[Legacy]<Name>``.
``tests/tf_keras/test_tfk_optimizers.py`` checks that this list covers every
optimizer class the installed tf_keras exports.
"""

from __future__ import annotations

# (introspect_opt.tf_keras imports _tf_keras_private first, which explains a
# missing tf-keras package.)
from tf_keras import optimizers as _new
from tf_keras.optimizers import legacy as _legacy

from ._tf_keras_factory import ready_made
from ._tf_keras_mechanism import LegacyIntrospectionMixin, NewIntrospectionMixin


@ready_made(_new.Adadelta)
class IntrospectableAdadelta(NewIntrospectionMixin, _new.Adadelta):
    """``tf.keras.optimizers.Adadelta`` (tf_keras) that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.Adadelta``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableAdadelta
        >>> opt = IntrospectableAdadelta()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_new.Adafactor)
class IntrospectableAdafactor(NewIntrospectionMixin, _new.Adafactor):
    """``tf.keras.optimizers.Adafactor`` (tf_keras) that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.Adafactor``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableAdafactor
        >>> opt = IntrospectableAdafactor()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_new.Adagrad)
class IntrospectableAdagrad(NewIntrospectionMixin, _new.Adagrad):
    """``tf.keras.optimizers.Adagrad`` (tf_keras) that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.Adagrad``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableAdagrad
        >>> opt = IntrospectableAdagrad()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_new.Adam)
class IntrospectableAdam(NewIntrospectionMixin, _new.Adam):
    """``tf.keras.optimizers.Adam`` (tf_keras) that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.Adam``;
    adds ``current_learning_rate``.

    Examples:
        >>> import tensorflow as tf
        >>> from introspect_opt.tf_keras import IntrospectableAdam
        >>> opt = IntrospectableAdam(0.01)
        >>> w = tf.Variable([1.0])
        >>> _ = opt.apply_gradients([(tf.ones(1), w)])
        >>> opt.learning_rate = 0.001  # as a LearningRateScheduler callback does
        >>> round(float(opt.learning_rate), 6), round(float(opt.current_learning_rate), 6)
        (0.001, 0.01)
        >>> _ = opt.apply_gradients([(tf.ones(1), w)])
        >>> round(float(opt.current_learning_rate), 6)  # applied now
        0.001
    """


@ready_made(_new.AdamW)
class IntrospectableAdamW(NewIntrospectionMixin, _new.AdamW):
    """``tf.keras.optimizers.AdamW`` (tf_keras) that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.AdamW``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableAdamW
        >>> opt = IntrospectableAdamW()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_new.Adamax)
class IntrospectableAdamax(NewIntrospectionMixin, _new.Adamax):
    """``tf.keras.optimizers.Adamax`` (tf_keras) that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.Adamax``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableAdamax
        >>> opt = IntrospectableAdamax()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_new.Ftrl)
class IntrospectableFtrl(NewIntrospectionMixin, _new.Ftrl):
    """``tf.keras.optimizers.Ftrl`` (tf_keras) that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.Ftrl``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableFtrl
        >>> opt = IntrospectableFtrl()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_new.Lion)
class IntrospectableLion(NewIntrospectionMixin, _new.Lion):
    """``tf.keras.optimizers.Lion`` (tf_keras) that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.Lion``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableLion
        >>> opt = IntrospectableLion()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.0001
    """


@ready_made(_new.Nadam)
class IntrospectableNadam(NewIntrospectionMixin, _new.Nadam):
    """``tf.keras.optimizers.Nadam`` (tf_keras) that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.Nadam``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableNadam
        >>> opt = IntrospectableNadam()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_new.RMSprop)
class IntrospectableRMSprop(NewIntrospectionMixin, _new.RMSprop):
    """``tf.keras.optimizers.RMSprop`` (tf_keras) that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.RMSprop``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableRMSprop
        >>> opt = IntrospectableRMSprop()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_new.SGD)
class IntrospectableSGD(NewIntrospectionMixin, _new.SGD):
    """``tf.keras.optimizers.SGD`` (tf_keras) that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.SGD``;
    adds ``current_learning_rate``.

    Examples:
        >>> import tensorflow as tf, tf_keras
        >>> from introspect_opt.tf_keras import IntrospectableSGD
        >>> schedule = tf_keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.1, 0.01])
        >>> opt = IntrospectableSGD(schedule, momentum=0.9)
        >>> w = tf.Variable([1.0, 2.0])
        >>> for _ in range(2):
        ...     _ = opt.apply_gradients([(tf.ones(2), w)])
        >>> round(float(opt.current_learning_rate), 6)  # update 2 ran at step 1
        0.01
        >>> round(float(opt.learning_rate), 6)  # same here: tf_keras keeps it too
        0.01
    """


@ready_made(_legacy.Adadelta)
class IntrospectableLegacyAdadelta(LegacyIntrospectionMixin, _legacy.Adadelta):
    """``tf.keras.optimizers.legacy.Adadelta`` that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.legacy.Adadelta``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableLegacyAdadelta
        >>> opt = IntrospectableLegacyAdadelta()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_legacy.Adagrad)
class IntrospectableLegacyAdagrad(LegacyIntrospectionMixin, _legacy.Adagrad):
    """``tf.keras.optimizers.legacy.Adagrad`` that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.legacy.Adagrad``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableLegacyAdagrad
        >>> opt = IntrospectableLegacyAdagrad()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_legacy.Adam)
class IntrospectableLegacyAdam(LegacyIntrospectionMixin, _legacy.Adam):
    """``tf.keras.optimizers.legacy.Adam`` that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.legacy.Adam``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableLegacyAdam
        >>> opt = IntrospectableLegacyAdam()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_legacy.Adamax)
class IntrospectableLegacyAdamax(LegacyIntrospectionMixin, _legacy.Adamax):
    """``tf.keras.optimizers.legacy.Adamax`` that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.legacy.Adamax``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableLegacyAdamax
        >>> opt = IntrospectableLegacyAdamax()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_legacy.Ftrl)
class IntrospectableLegacyFtrl(LegacyIntrospectionMixin, _legacy.Ftrl):
    """``tf.keras.optimizers.legacy.Ftrl`` that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.legacy.Ftrl``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableLegacyFtrl
        >>> opt = IntrospectableLegacyFtrl()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_legacy.Nadam)
class IntrospectableLegacyNadam(LegacyIntrospectionMixin, _legacy.Nadam):
    """``tf.keras.optimizers.legacy.Nadam`` that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.legacy.Nadam``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableLegacyNadam
        >>> opt = IntrospectableLegacyNadam()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_legacy.RMSprop)
class IntrospectableLegacyRMSprop(LegacyIntrospectionMixin, _legacy.RMSprop):
    """``tf.keras.optimizers.legacy.RMSprop`` that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.legacy.RMSprop``;
    adds ``current_learning_rate``.

    Examples:
        >>> from introspect_opt.tf_keras import IntrospectableLegacyRMSprop
        >>> opt = IntrospectableLegacyRMSprop()
        >>> round(float(opt.current_learning_rate), 6)  # before any update: the first one's
        0.001
    """


@ready_made(_legacy.SGD)
class IntrospectableLegacySGD(LegacyIntrospectionMixin, _legacy.SGD):
    """``tf.keras.optimizers.legacy.SGD`` that records the rate each update applied.

    Same constructor, config and updates as ``tf_keras.optimizers.legacy.SGD``;
    adds ``current_learning_rate``.

    Examples:
        >>> import tensorflow as tf, tf_keras
        >>> from introspect_opt.tf_keras import IntrospectableLegacySGD
        >>> schedule = tf_keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.1, 0.01])
        >>> opt = IntrospectableLegacySGD(schedule, momentum=0.9)
        >>> w = tf.Variable([1.0, 2.0])
        >>> _ = opt.apply_gradients([(tf.ones(2), w)])
        >>> round(float(opt.current_learning_rate), 6)  # update 1 ran at step 0
        0.1
        >>> round(float(opt._decayed_lr(tf.float32)), 6)  # legacy: the next update's
        0.01
    """
