"""Keras 2 (tf_keras): introspectable optimizers for ``tf.keras`` under ``TF_USE_LEGACY_KERAS=1``.

The same contract as the Keras 3 classes of ``introspect_opt``, for the
optimizers of the ``tf-keras`` package: new ones (``tf.keras.optimizers.Adam``
-> ``IntrospectableAdam``) and legacy ones (``tf.keras.optimizers.legacy.Adam``
-> ``IntrospectableLegacyAdam``). Import this module to choose Keras 2
explicitly; ``import introspect_opt`` gives these names too when
``TF_USE_LEGACY_KERAS`` is set as TensorFlow reads it. Importing it needs the
``tf-keras`` package. See docs/keras2.md.
"""

import typing as _typing

from introspect_opt._tf_keras.callbacks import LearningRateLogger as LearningRateLogger
from introspect_opt._tf_keras.factory import current_learning_rate as current_learning_rate
from introspect_opt._tf_keras.factory import introspect as introspect
from introspect_opt._tf_keras.factory import introspectable as introspectable

# Every Introspectable[Legacy]<Name> class: one line each, in the table of
# introspect_opt/_tf_keras/optimizers.py.
from introspect_opt._tf_keras.optimizers import *  # noqa: F403

if not _typing.TYPE_CHECKING:
    # Type checkers take the exports from the imports above ("X as X" and the
    # star import): mypy cannot add the table's derived __all__ to a literal one.
    from introspect_opt._tf_keras import optimizers as _optimizers

    __all__ = sorted(
        [
            "LearningRateLogger",
            "current_learning_rate",
            "introspect",
            "introspectable",
            *_optimizers.__all__,
        ]
    )
