"""Test set-up: the Keras backend, quiet TensorFlow, logical CPU devices.

The suite runs once per backend (``KERAS_BACKEND=tensorflow``, the default,
then ``jax`` and ``torch``); tests marked ``tf_only`` use TensorFlow-only APIs
(``tf.function``, ``tf.train.Checkpoint``, ``tf.distribute``) and are skipped,
with that reason, on the other backends.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import pytest

BACKEND = keras.backend.backend()

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Logical devices must be configured before TensorFlow initialises its runtime.
    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(4)]
    )


# The tf_keras (Keras 2) suite runs in a pass of its own, with tf.keras set to
# tf_keras before TensorFlow starts: `TF_USE_LEGACY_KERAS=1 pytest tests/tf_keras`.
if os.environ.get("TF_USE_LEGACY_KERAS") in ("true", "True", "1"):
    collect_ignore_glob = ["test_*.py"]
else:
    collect_ignore = ["tf_keras"]


def _gpu_visible() -> bool:
    """Whether the Keras backend in use can see a GPU."""
    if BACKEND == "tensorflow":
        return bool(tf.config.list_physical_devices("GPU"))
    if BACKEND == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if BACKEND == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return False


# Under pytest-xdist (`-n 2 --dist loadgroup`, pyproject.toml) each test file runs
# in one worker, and the files that run strategies and multi-process jobs share
# one: two of them at once on two cores starve each other's collectives.
_ONE_AT_A_TIME = {
    "test_distributed",
    "test_multi_worker",
    "test_parameter_server",
    "test_strategy_scope",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips TensorFlow-only tests on the JAX and torch backends, and GPU tests without a GPU."""
    for item in items:
        module = item.path.stem
        group = "distributed" if module in _ONE_AT_A_TIME else module
        item.add_marker(pytest.mark.xdist_group(group))
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _gpu_visible():
        skip_gpu = pytest.mark.skip(
            reason=f"needs a GPU; none is visible to the {BACKEND} backend "
            "(on a GPU machine run `pytest -m gpu`)"
        )
        for item in gpu_items:
            item.add_marker(skip_gpu)
    if BACKEND == "tensorflow":
        return
    skip = pytest.mark.skip(
        reason="uses TensorFlow-only APIs (tf.function, tf.train.Checkpoint, "
        f"tf.distribute); KERAS_BACKEND={BACKEND}"
    )
    for item in items:
        if item.get_closest_marker("tf_only"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_keras_state() -> None:
    """Every test starts with float32 policy and fresh Keras name counters.

    (``free_memory=False``: the garbage collection clear_session runs by default
    costs half a second per test on 2 cores; Python collects anyway.)
    """
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session(free_memory=False)
