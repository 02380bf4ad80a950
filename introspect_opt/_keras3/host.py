"""Reading values on the host: tensors and variables of every backend and strategy."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

# The variable types host_array reads with ``numpy()`` (none without TensorFlow).
_TF_VARIABLES: tuple[Any, ...] = ()

if keras.backend.backend() == "tensorflow":  # pragma: no branch - CI runs TensorFlow first.
    import tensorflow as tf

    # tf.distribute variables (MirroredVariable, ...) are tf.Variable instances.
    _TF_VARIABLES = (tf.Variable,)


def host_array(value: Any) -> np.ndarray:
    """A tensor's or variable's value on the host, by the backend's shortest path.

    ``keras.ops.convert_to_numpy`` spends a tenth of a millisecond on checks
    per call, several times the read itself, and loggers read several values
    per interval.

    TensorFlow variables are read with ``numpy()``, the one read that works for
    every kind in every context: inside ``strategy.scope()`` (cross-replica
    context) NumPy finds a ``tf.distribute`` variable's ``__array__`` on the
    tensor the strategy reads there, which returns a NumPy scalar for a
    rank-0 variable, and ``np.asarray`` (``keras.ops.convert_to_numpy`` too)
    fails with "object __array__ method not producing an array". ``numpy()``
    reads the local copy (identical on every replica of a mirrored variable;
    no collective, so one worker may read alone).
    """
    if isinstance(value, keras.Variable):
        value = value.value
    if isinstance(value, _TF_VARIABLES):
        return np.asarray(value.numpy())
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError):  # e.g. a distributed variable
        return np.asarray(keras.ops.convert_to_numpy(value))


def host_float(value: Any) -> float:
    return float(host_array(value))


def is_number_array(value: np.ndarray) -> bool:
    """Whether an array read from a file holds numbers (bfloat16 and float8 included)."""
    if value.dtype.kind in "iuf":
        return True
    try:  # bfloat16 and float8 arrive as ml_dtypes
        name = str(keras.backend.standardize_dtype(value.dtype))
    except (ValueError, TypeError):
        return False
    return name.startswith(("float", "bfloat", "int", "uint"))
