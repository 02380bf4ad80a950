"""introspect-opt: the learning rate your Keras optimizer actually applied."""

from ._optimizers import IntrospectableSGD as IntrospectableSGD

__version__ = "0.1.0"

__all__ = ["IntrospectableSGD"]
