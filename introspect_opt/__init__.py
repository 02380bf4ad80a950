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

from introspect_opt._env import KerasThreeOnly as _KerasThreeOnly
from introspect_opt._env import uses_legacy_keras as _uses_legacy_keras
from introspect_opt._version import __version__ as __version__

_KERAS_2 = _uses_legacy_keras()

# The Keras 3 names besides the Introspectable<Name> classes of the table;
# with TF_USE_LEGACY_KERAS set, asking for one says it is Keras 3 only.
_KERAS_3_TOOLS = (
    "DiagnosticsToTensorBoard",
    "IntrospectableOptimizer",
    "LearningRateLogger",
    "RateHistoryToTensorBoard",
    "ScaleLearningRateOnPlateau",
    "ScaledLearningRate",
    "UpdateCSVLogger",
    "current_learning_rate",
    "introspect",
    "introspectable",
    "keep_rate_history",
    "last_update_diagnostics",
    "plot_learning_rate",
    "preview_learning_rates",
    "rate_history",
    "record_diagnostics",
)

if _typing.TYPE_CHECKING or not _KERAS_2:
    from introspect_opt._callbacks.diagnostics_tensorboard import (
        DiagnosticsToTensorBoard as DiagnosticsToTensorBoard,
    )
    from introspect_opt._callbacks.logger import LearningRateLogger as LearningRateLogger
    from introspect_opt._callbacks.plateau import (
        ScaleLearningRateOnPlateau as ScaleLearningRateOnPlateau,
    )
    from introspect_opt._callbacks.step_csv import UpdateCSVLogger as UpdateCSVLogger
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
    from introspect_opt._keras3.factory import introspect as introspect
    from introspect_opt._keras3.factory import introspectable as introspectable
    from introspect_opt._keras3.mixin import IntrospectableOptimizer as IntrospectableOptimizer

    # Every Introspectable<Name> class: one line each, in the table of
    # introspect_opt/_keras3/optimizers.py.
    from introspect_opt._keras3.optimizers import *  # noqa: F403
    from introspect_opt._keras3.resolve import current_learning_rate as current_learning_rate
    from introspect_opt._preview.preview import plot_learning_rate as plot_learning_rate
    from introspect_opt._preview.preview import preview_learning_rates as preview_learning_rates

    if not _typing.TYPE_CHECKING:
        # Type checkers take the exports from the imports above ("X as X" and the
        # star import): mypy cannot add the table's derived __all__ to a literal one.
        from introspect_opt._keras3 import optimizers as _optimizers

        __all__ = sorted([*_KERAS_3_TOOLS, *_optimizers.__all__])
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


def __getattr__(name: str) -> _typing.Any:
    keras_3_only = name in _KERAS_3_TOOLS or name.startswith("Introspectable")
    if _KERAS_2 and (keras_3_only or name in _DEPRECATED):
        raise _KerasThreeOnly(
            f"introspect_opt.{name} is Keras 3 only: TF_USE_LEGACY_KERAS is set, so "
            "introspect_opt gives the tf_keras (Keras 2) classes of introspect_opt.tf_keras "
            "(see docs/keras2.md)."
        )
    if name in _DEPRECATED:
        import importlib

        return getattr(importlib.import_module(_DEPRECATED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
