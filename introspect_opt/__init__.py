"""introspect-opt: the learning rate your Keras optimizer actually applied."""

from ._callbacks import LearningRateLogger as LearningRateLogger
from ._callbacks import ScaleLearningRateOnPlateau as ScaleLearningRateOnPlateau
from ._diagnostics import record_diagnostics as record_diagnostics
from ._diagnostics import update_diagnostics as update_diagnostics
from ._factory import current_learning_rate as current_learning_rate
from ._factory import introspect as introspect
from ._factory import introspectable as introspectable
from ._history import keep_rate_history as keep_rate_history
from ._history import rate_history as rate_history
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
from ._preview import applied_learning_rates as applied_learning_rates
from ._preview import plot_learning_rate as plot_learning_rate

__version__ = "0.1.0"

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
    "IntrospectableRMSprop",
    "IntrospectableSGD",
    "IntrospectableScheduleFreeAdamW",
    "LearningRateLogger",
    "ScaleLearningRateOnPlateau",
    "applied_learning_rates",
    "current_learning_rate",
    "introspect",
    "introspectable",
    "keep_rate_history",
    "plot_learning_rate",
    "rate_history",
    "record_diagnostics",
    "update_diagnostics",
]
