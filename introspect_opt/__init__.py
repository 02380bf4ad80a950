"""introspect-opt: the learning rate your Keras optimizer actually applied.

This module only re-exports (see docs/architecture.md). Which classes its
names are follows the Keras that ``tf.keras`` is in this process, read as
TensorFlow reads it: Keras 3 by default; with ``TF_USE_LEGACY_KERAS=1``, the
tf_keras (Keras 2) classes of :mod:`introspect_opt.tf_keras`, so that the
same import serves both worlds. Type checkers see the Keras 3 names; code
written for Keras 2 that wants checked types imports
:mod:`introspect_opt.tf_keras` (docs/keras2.md, "Types").
"""

import typing as _typing

from introspect_opt._env import uses_legacy_keras as _uses_legacy_keras
from introspect_opt._version import __version__ as __version__

_KERAS_2 = _uses_legacy_keras()

if _typing.TYPE_CHECKING or not _KERAS_2:
    from introspect_opt._callbacks.logger import LearningRateLogger as LearningRateLogger
    from introspect_opt._callbacks.tensorboard import (
        RateHistoryToTensorBoard as RateHistoryToTensorBoard,
    )
    from introspect_opt._features.diagnostics import (
        last_update_diagnostics as last_update_diagnostics,
    )
    from introspect_opt._features.diagnostics import record_diagnostics as record_diagnostics
    from introspect_opt._features.history import keep_rate_history as keep_rate_history
    from introspect_opt._features.history import rate_history as rate_history
    from introspect_opt._features.plateau import ScaledLearningRate as ScaledLearningRate
    from introspect_opt._features.plateau import (
        ScaleLearningRateOnPlateau as ScaleLearningRateOnPlateau,
    )
    from introspect_opt._keras3.factory import introspect as introspect
    from introspect_opt._keras3.factory import introspectable as introspectable
    from introspect_opt._keras3.mixin import IntrospectableOptimizer as IntrospectableOptimizer
    from introspect_opt._keras3.optimizers import IntrospectableAdadelta as IntrospectableAdadelta
    from introspect_opt._keras3.optimizers import IntrospectableAdafactor as IntrospectableAdafactor
    from introspect_opt._keras3.optimizers import IntrospectableAdagrad as IntrospectableAdagrad
    from introspect_opt._keras3.optimizers import IntrospectableAdam as IntrospectableAdam
    from introspect_opt._keras3.optimizers import IntrospectableAdamax as IntrospectableAdamax
    from introspect_opt._keras3.optimizers import IntrospectableAdamW as IntrospectableAdamW
    from introspect_opt._keras3.optimizers import IntrospectableFtrl as IntrospectableFtrl
    from introspect_opt._keras3.optimizers import IntrospectableLamb as IntrospectableLamb
    from introspect_opt._keras3.optimizers import IntrospectableLion as IntrospectableLion
    from introspect_opt._keras3.optimizers import IntrospectableMuon as IntrospectableMuon
    from introspect_opt._keras3.optimizers import IntrospectableNadam as IntrospectableNadam
    from introspect_opt._keras3.optimizers import IntrospectableRMSprop as IntrospectableRMSprop
    from introspect_opt._keras3.optimizers import (
        IntrospectableScheduleFreeAdamW as IntrospectableScheduleFreeAdamW,
    )
    from introspect_opt._keras3.optimizers import IntrospectableSGD as IntrospectableSGD
    from introspect_opt._keras3.resolve import current_learning_rate as current_learning_rate
    from introspect_opt._preview.preview import plot_learning_rate as plot_learning_rate
    from introspect_opt._preview.preview import preview_learning_rates as preview_learning_rates

    __all__ = [
        "IntrospectableAdadelta",
        "IntrospectableAdafactor",
        "IntrospectableAdagrad",
        "IntrospectableAdam",
        "IntrospectableAdamW",
        "IntrospectableAdamax",
        "IntrospectableFtrl",
        "IntrospectableLamb",
        "IntrospectableLion",
        "IntrospectableMuon",
        "IntrospectableNadam",
        "IntrospectableOptimizer",
        "IntrospectableRMSprop",
        "IntrospectableSGD",
        "IntrospectableScheduleFreeAdamW",
        "LearningRateLogger",
        "RateHistoryToTensorBoard",
        "ScaleLearningRateOnPlateau",
        "ScaledLearningRate",
        "current_learning_rate",
        "introspect",
        "introspectable",
        "keep_rate_history",
        "last_update_diagnostics",
        "plot_learning_rate",
        "preview_learning_rates",
        "rate_history",
        "record_diagnostics",
    ]
else:
    from introspect_opt.tf_keras import *  # noqa: F403
    from introspect_opt.tf_keras import __all__ as __all__

if _typing.TYPE_CHECKING:
    # Deprecated names: still working (with a DeprecationWarning) until 0.3,
    # no longer in __all__ or the API page.
    from introspect_opt._features.diagnostics import update_diagnostics as update_diagnostics
    from introspect_opt._preview.preview import applied_learning_rates as applied_learning_rates

_DEPRECATED = {
    "applied_learning_rates": "introspect_opt._preview.preview",
    "update_diagnostics": "introspect_opt._features.diagnostics",
}

# Keras 3 only: with TF_USE_LEGACY_KERAS set, asking for these names says so.
_KERAS_3_ONLY = (
    "IntrospectableLamb",
    "IntrospectableMuon",
    "IntrospectableOptimizer",
    "IntrospectableScheduleFreeAdamW",
    "RateHistoryToTensorBoard",
    "ScaleLearningRateOnPlateau",
    "ScaledLearningRate",
    "keep_rate_history",
    "last_update_diagnostics",
    "plot_learning_rate",
    "preview_learning_rates",
    "rate_history",
    "record_diagnostics",
)


def __getattr__(name: str) -> _typing.Any:
    if _KERAS_2 and (name in _KERAS_3_ONLY or name in _DEPRECATED):
        raise AttributeError(
            f"introspect_opt.{name} is Keras 3 only: TF_USE_LEGACY_KERAS is set, so "
            "introspect_opt gives the tf_keras (Keras 2) classes of introspect_opt.tf_keras "
            "(see docs/keras2.md)."
        )
    if name in _DEPRECATED:
        import importlib

        return getattr(importlib.import_module(_DEPRECATED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
