"""introspect-opt: the learning rate your Keras optimizer actually applied."""

import os as _os
import sys as _sys
import typing as _typing

from ._tf_keras_env import uses_legacy_keras as _uses_legacy_keras


def _is_command_line() -> bool:
    """Whether this process is the command line, ``introspect-opt`` or ``python -m introspect_opt``.

    ``import introspect_opt`` loads Keras (and TensorFlow behind it) and registers
    every class with Keras, so that ``keras.models.load_model`` finds them; the
    command line must answer ``--help`` without that start-up, and loads it
    only when a command needs it (``_cli``).
    """
    program = _os.path.basename(_sys.argv[0]) if _sys.argv else ""
    if program.split(".")[0] == "introspect-opt":
        return True
    original = list(getattr(_sys, "orig_argv", []))
    return any(original[i : i + 2] == ["-m", "introspect_opt"] for i in range(len(original)))


# Where `tf.keras` is tf_keras (TF_USE_LEGACY_KERAS, read as TensorFlow reads it),
# the same import gives the Keras 2 classes of introspect_opt.tf_keras.
_KERAS_2 = _uses_legacy_keras()

if not _typing.TYPE_CHECKING and _KERAS_2 and not _is_command_line():
    # (Type checkers see the Keras 3 names; the command line plots Keras 3 files.)
    from .tf_keras import *  # noqa: F403
    from .tf_keras import __all__ as _keras_2_names
elif _typing.TYPE_CHECKING or not _is_command_line():
    from ._callbacks import LearningRateLogger as LearningRateLogger
    from ._diagnostics import last_update_diagnostics as last_update_diagnostics
    from ._diagnostics import record_diagnostics as record_diagnostics
    from ._diagnostics import update_diagnostics as update_diagnostics
    from ._factory import introspect as introspect
    from ._factory import introspectable as introspectable
    from ._history import keep_rate_history as keep_rate_history
    from ._history import rate_history as rate_history
    from ._mixin import IntrospectableOptimizer as IntrospectableOptimizer
    from ._optimizers import IntrospectableAdadelta as IntrospectableAdadelta
    from ._optimizers import IntrospectableAdafactor as IntrospectableAdafactor
    from ._optimizers import IntrospectableAdagrad as IntrospectableAdagrad
    from ._optimizers import IntrospectableAdam as IntrospectableAdam
    from ._optimizers import IntrospectableAdamax as IntrospectableAdamax
    from ._optimizers import IntrospectableAdamW as IntrospectableAdamW
    from ._optimizers import IntrospectableFtrl as IntrospectableFtrl
    from ._optimizers import IntrospectableLamb as IntrospectableLamb
    from ._optimizers import IntrospectableLion as IntrospectableLion
    from ._optimizers import IntrospectableMuon as IntrospectableMuon
    from ._optimizers import IntrospectableNadam as IntrospectableNadam
    from ._optimizers import IntrospectableRMSprop as IntrospectableRMSprop
    from ._optimizers import IntrospectableScheduleFreeAdamW as IntrospectableScheduleFreeAdamW
    from ._optimizers import IntrospectableSGD as IntrospectableSGD
    from ._plateau import ScaledLearningRate as ScaledLearningRate
    from ._plateau import ScaleLearningRateOnPlateau as ScaleLearningRateOnPlateau
    from ._preview import applied_learning_rates as applied_learning_rates
    from ._preview import plot_learning_rate as plot_learning_rate
    from ._preview import preview_learning_rates as preview_learning_rates
    from ._resolve import current_learning_rate as current_learning_rate
    from ._tensorboard import RateHistoryToTensorBoard as RateHistoryToTensorBoard

__version__ = "0.2.0"

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
    "applied_learning_rates",
    "current_learning_rate",
    "introspect",
    "introspectable",
    "keep_rate_history",
    "last_update_diagnostics",
    "plot_learning_rate",
    "preview_learning_rates",
    "rate_history",
    "record_diagnostics",
    "update_diagnostics",
]


_keras_3_names = list(__all__)
if not _typing.TYPE_CHECKING and _KERAS_2 and not _is_command_line():
    __all__ = list(_keras_2_names)


def __getattr__(name: str) -> _typing.Any:
    if _KERAS_2 and name in _keras_3_names and not _is_command_line():
        raise AttributeError(
            f"introspect_opt.{name} is Keras 3 only: TF_USE_LEGACY_KERAS is set, so "
            "introspect_opt gives the tf_keras (Keras 2) classes of introspect_opt.tf_keras "
            "(see docs/keras2.md)."
        )
    # The command line imported the package without the modules above: load
    # them on first use of a public name.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _load()
    return globals()[name]


def _load() -> None:
    """Imports every module, registering every class with Keras (the command line's way)."""
    import importlib

    modules = [
        importlib.import_module(f"{__name__}.{module}")
        for module in (
            "_callbacks",
            "_diagnostics",
            "_factory",
            "_history",
            "_mixin",
            "_optimizers",
            "_plateau",
            "_preview",
            "_resolve",
            "_tensorboard",
        )
    ]
    for public in _keras_3_names:
        globals()[public] = next(vars(m)[public] for m in modules if public in vars(m))
