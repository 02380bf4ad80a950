"""Test set-up: quiet TensorFlow and four logical CPU devices for strategies."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import pytest
import tensorflow as tf

# Logical devices must be configured before TensorFlow initialises its runtime.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(4)]
)


@pytest.fixture(autouse=True)
def _fresh_keras_state() -> None:
    """Every test starts with float32 policy and fresh Keras name counters."""
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
