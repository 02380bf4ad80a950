"""Keras 2 (tf_keras): introspectable optimizers for ``tf.keras`` under ``TF_USE_LEGACY_KERAS=1``.

The same contract as the Keras 3 classes of ``introspect_opt``, for the
optimizers of the ``tf-keras`` package: new ones (``tf.keras.optimizers.Adam``
-> ``IntrospectableAdam``) and legacy ones (``tf.keras.optimizers.legacy.Adam``
-> ``IntrospectableLegacyAdam``). Import this module to choose Keras 2
explicitly; ``import introspect_opt`` gives these names too when
``TF_USE_LEGACY_KERAS`` is set as TensorFlow reads it. Importing it needs the
``tf-keras`` package. See docs/keras2.md.
"""

from ._tf_keras_callbacks import LearningRateLogger as LearningRateLogger
from ._tf_keras_factory import current_learning_rate as current_learning_rate
from ._tf_keras_factory import introspect as introspect
from ._tf_keras_factory import introspectable as introspectable
from ._tf_keras_optimizers import IntrospectableAdadelta as IntrospectableAdadelta
from ._tf_keras_optimizers import IntrospectableAdafactor as IntrospectableAdafactor
from ._tf_keras_optimizers import IntrospectableAdagrad as IntrospectableAdagrad
from ._tf_keras_optimizers import IntrospectableAdam as IntrospectableAdam
from ._tf_keras_optimizers import IntrospectableAdamax as IntrospectableAdamax
from ._tf_keras_optimizers import IntrospectableAdamW as IntrospectableAdamW
from ._tf_keras_optimizers import IntrospectableFtrl as IntrospectableFtrl
from ._tf_keras_optimizers import IntrospectableLegacyAdadelta as IntrospectableLegacyAdadelta
from ._tf_keras_optimizers import IntrospectableLegacyAdagrad as IntrospectableLegacyAdagrad
from ._tf_keras_optimizers import IntrospectableLegacyAdam as IntrospectableLegacyAdam
from ._tf_keras_optimizers import IntrospectableLegacyAdamax as IntrospectableLegacyAdamax
from ._tf_keras_optimizers import IntrospectableLegacyFtrl as IntrospectableLegacyFtrl
from ._tf_keras_optimizers import IntrospectableLegacyNadam as IntrospectableLegacyNadam
from ._tf_keras_optimizers import IntrospectableLegacyRMSprop as IntrospectableLegacyRMSprop
from ._tf_keras_optimizers import IntrospectableLegacySGD as IntrospectableLegacySGD
from ._tf_keras_optimizers import IntrospectableLion as IntrospectableLion
from ._tf_keras_optimizers import IntrospectableNadam as IntrospectableNadam
from ._tf_keras_optimizers import IntrospectableRMSprop as IntrospectableRMSprop
from ._tf_keras_optimizers import IntrospectableSGD as IntrospectableSGD

__all__ = [
    "IntrospectableAdadelta",
    "IntrospectableAdafactor",
    "IntrospectableAdagrad",
    "IntrospectableAdam",
    "IntrospectableAdamW",
    "IntrospectableAdamax",
    "IntrospectableFtrl",
    "IntrospectableLegacyAdadelta",
    "IntrospectableLegacyAdagrad",
    "IntrospectableLegacyAdam",
    "IntrospectableLegacyAdamax",
    "IntrospectableLegacyFtrl",
    "IntrospectableLegacyNadam",
    "IntrospectableLegacyRMSprop",
    "IntrospectableLegacySGD",
    "IntrospectableLion",
    "IntrospectableNadam",
    "IntrospectableRMSprop",
    "IntrospectableSGD",
    "LearningRateLogger",
    "current_learning_rate",
    "introspect",
    "introspectable",
]
