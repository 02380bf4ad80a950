"""Whether ``tf.keras`` is tf_keras (Keras 2) in this process, read as TensorFlow reads it.

Also the error a Keras-3-only name raises in the Keras 2 world.

Imports nothing: ``introspect_opt/__init__.py`` asks this before deciding which
classes its top-level names are, and must not load tf_keras (or TensorFlow)
to do so.
"""

from __future__ import annotations

import os

# tensorflow/__init__.py and tensorflow/python/util/lazy_loader.py (TF 2.16
# to 2.21): `os.environ.get("TF_USE_LEGACY_KERAS", None) in ("true", "True", "1")`.
_LEGACY_VALUES = ("true", "True", "1")


def uses_legacy_keras() -> bool:
    """True where TensorFlow routes ``tf.keras`` to the tf_keras package."""
    return os.environ.get("TF_USE_LEGACY_KERAS", None) in _LEGACY_VALUES


class KerasThreeOnly(AttributeError, NotImplementedError):
    """A name of introspect_opt that the Keras 2 (tf_keras) world does not have.

    An ``AttributeError`` (so ``hasattr`` and ``getattr(..., default)`` work)
    and a ``NotImplementedError`` (what it means: not implemented for Keras 2).
    """
