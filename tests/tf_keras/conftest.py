"""Set-up of the tf_keras (Keras 2) pass: ``TF_USE_LEGACY_KERAS=1 pytest tests/tf_keras``.

The root conftest configures 4 logical CPU devices and the Keras 3 state; this
one checks that ``tf.keras`` really is tf_keras (the variable must be set
before TensorFlow is imported) and resets tf_keras's own global state before
every test.
"""

from __future__ import annotations

import os

import pytest
import tensorflow as tf

from introspect_opt._env import uses_legacy_keras

LEGACY = uses_legacy_keras()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips this folder, with the reason, unless tf.keras is tf_keras."""
    if LEGACY:
        return
    skip = pytest.mark.skip(
        reason="the tf_keras pass: run `TF_USE_LEGACY_KERAS=1 python -m pytest tests/tf_keras`"
    )
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_keras_state() -> None:
    """Every test starts with the float32 policy and fresh tf_keras name counters.

    Overrides the root conftest's fixture of the same name, which resets Keras 3
    (about 0.45 s per test, for state these tests never touch).
    """
    if not LEGACY:
        return
    import tf_keras

    tf_keras.mixed_precision.set_global_policy("float32")
    tf_keras.backend.clear_session()


@pytest.fixture(scope="session")
def devices() -> list[str]:
    """The logical CPU devices the root conftest configured (at least 2)."""
    names = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(names) >= 2, names
    return names
