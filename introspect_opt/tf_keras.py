"""Keras 2 (tf_keras): introspectable optimizers for ``tf.keras`` under ``TF_USE_LEGACY_KERAS=1``.

The same contract as the Keras 3 classes of ``introspect_opt``, for the
optimizers of the ``tf-keras`` package: new ones (``tf.keras.optimizers.Adam``
-> ``IntrospectableAdam``) and legacy ones (``tf.keras.optimizers.legacy.Adam``
-> ``IntrospectableLegacyAdam``). Import this module to choose Keras 2
explicitly; ``import introspect_opt`` gives these names too when
``TF_USE_LEGACY_KERAS`` is set as TensorFlow reads it. Importing it needs the
``tf-keras`` package. See docs/keras2.md.
"""

from introspect_opt._tf_keras.callbacks import LearningRateLogger as LearningRateLogger
from introspect_opt._tf_keras.factory import current_learning_rate as current_learning_rate
from introspect_opt._tf_keras.factory import introspect as introspect
from introspect_opt._tf_keras.factory import introspectable as introspectable
from introspect_opt._tf_keras.optimizers import IntrospectableAdadelta as IntrospectableAdadelta
from introspect_opt._tf_keras.optimizers import IntrospectableAdafactor as IntrospectableAdafactor
from introspect_opt._tf_keras.optimizers import IntrospectableAdagrad as IntrospectableAdagrad
from introspect_opt._tf_keras.optimizers import IntrospectableAdam as IntrospectableAdam
from introspect_opt._tf_keras.optimizers import IntrospectableAdamax as IntrospectableAdamax
from introspect_opt._tf_keras.optimizers import IntrospectableAdamW as IntrospectableAdamW
from introspect_opt._tf_keras.optimizers import IntrospectableFtrl as IntrospectableFtrl
from introspect_opt._tf_keras.optimizers import (
    IntrospectableLegacyAdadelta as IntrospectableLegacyAdadelta,
)
from introspect_opt._tf_keras.optimizers import (
    IntrospectableLegacyAdagrad as IntrospectableLegacyAdagrad,
)
from introspect_opt._tf_keras.optimizers import IntrospectableLegacyAdam as IntrospectableLegacyAdam
from introspect_opt._tf_keras.optimizers import (
    IntrospectableLegacyAdamax as IntrospectableLegacyAdamax,
)
from introspect_opt._tf_keras.optimizers import IntrospectableLegacyFtrl as IntrospectableLegacyFtrl
from introspect_opt._tf_keras.optimizers import (
    IntrospectableLegacyNadam as IntrospectableLegacyNadam,
)
from introspect_opt._tf_keras.optimizers import (
    IntrospectableLegacyRMSprop as IntrospectableLegacyRMSprop,
)
from introspect_opt._tf_keras.optimizers import IntrospectableLegacySGD as IntrospectableLegacySGD
from introspect_opt._tf_keras.optimizers import IntrospectableLion as IntrospectableLion
from introspect_opt._tf_keras.optimizers import IntrospectableNadam as IntrospectableNadam
from introspect_opt._tf_keras.optimizers import IntrospectableRMSprop as IntrospectableRMSprop
from introspect_opt._tf_keras.optimizers import IntrospectableSGD as IntrospectableSGD

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
