"""A refused tf_keras load says once how to keep the current state, in the source's terms.

The Keras 3 world and the message builder: ``tests/test_refusal_messages.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tfk_helpers import SCHEDULE, make_model

from introspect_opt import tf_keras as itk
from introspect_opt._common.errors import CHECKPOINT_SOURCE, RefusedLoad

FILE = (
    "To load the model weights and keep this optimizer's current state, use "
    "`model.load_weights(path, skip_mismatch=True)` (or `load_model(path, compile=False)`)."
)
CHECKPOINT = (
    "A tf.train.Checkpoint has no skip_mismatch: restore it into an optimizer like the one "
    "that wrote it, or leave the optimizer out of the tf.train.Checkpoint you restore into "
    "(that keeps its current state)."
)
SAME_OPTIMIZER = (
    "Create the optimizer with the same class and arguments as the one that wrote it (for "
    "example the same `amsgrad`, `use_ema` or legacy `momentum`)."
)


def assert_keeps_state_once(message: str, sentence: str) -> None:
    """``sentence`` is the message's only advice on keeping the current state."""
    assert message.count(sentence) == 1, message
    assert message.count("current state") == 1, message
    if sentence == CHECKPOINT:
        assert "skip_mismatch=True" not in message, message
        assert "load_weights" not in message and "load_model" not in message, message


def _trained(optimizer: Any) -> Any:
    model = make_model()
    model.compile(optimizer, loss="mse")
    variables = model.trainable_variables
    model.optimizer.apply_gradients(
        zip([tf.fill(v.shape, 0.5) for v in variables], variables, strict=True)
    )
    return model


def _build(model: Any) -> None:
    optimizer = model.optimizer
    if isinstance(optimizer, tf_keras.optimizers.Optimizer):
        optimizer.build(model.trainable_variables)
    else:
        optimizer._create_all_weights(model.trainable_variables)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """New-family files (ours, plain SGD) and checkpoints of both families, after one update."""
    tf_keras.mixed_precision.set_global_policy("float32")
    tf_keras.backend.clear_session()
    folder = tmp_path_factory.mktemp("written")
    paths: dict[str, Any] = {}
    for label, optimizer in [
        ("ours", itk.IntrospectableSGD(SCHEDULE, momentum=0.9)),
        ("plain", tf_keras.optimizers.SGD(0.1, momentum=0.9)),
    ]:
        paths[label] = folder / f"{label}.weights.h5"
        _trained(optimizer).save_weights(paths[label])
    for family, optimizer in [
        ("new", itk.IntrospectableSGD(SCHEDULE, momentum=0.9)),
        ("legacy", itk.IntrospectableLegacySGD(SCHEDULE, momentum=0.9)),
    ]:
        model = _trained(optimizer)
        paths[family] = tf.train.Checkpoint(optimizer=model.optimizer).write(
            str(folder / family / "ck")
        )
    return paths


@pytest.mark.parametrize(
    ("case", "factory", "fix"),
    [
        ("another class", lambda: itk.IntrospectableAdagrad(0.1), SAME_OPTIMIZER),
        ("plain file, other variables", lambda: itk.IntrospectableAdam(SCHEDULE), None),
        ("rate not a scalar", lambda: itk.IntrospectableSGD(SCHEDULE, momentum=0.9), None),
        ("manifest not JSON", lambda: itk.IntrospectableSGD(SCHEDULE, momentum=0.9), None),
    ],
    ids=["another class", "plain file", "rate not a scalar", "manifest not JSON"],
)
def test_a_refused_file_says_skip_mismatch_once(
    written: dict[str, Any], tmp_path: Path, case: str, factory: Any, fix: str | None
) -> None:
    """Mismatched or damaged: one keep-state sentence, after what would make it match."""
    path = written["plain" if case.startswith("plain") else "ours"]
    if case in ("rate not a scalar", "manifest not JSON"):
        damaged = tmp_path / "damaged.weights.h5"
        damaged.write_bytes(path.read_bytes())
        key = "applied_learning_rate" if case == "rate not a scalar" else "manifest"
        with h5py.File(damaged, "r+") as f:
            state = f["optimizer/_introspection_state/vars"]
            del state[key]
            if key == "manifest":
                state[key] = np.frombuffer(b"{not json", np.uint8)
            else:
                state[key] = np.zeros(3, np.float32)
        path = damaged
    model = make_model(seed=5)
    model.compile(factory(), loss="mse")
    _build(model)
    with pytest.raises(RefusedLoad) as raised:
        model.load_weights(path)
    message = str(raised.value)
    assert path.name in message, message
    assert_keeps_state_once(message, FILE)
    assert "tf.train.Checkpoint" not in message, message
    if fix is not None:
        assert message.index(fix) < message.index(FILE), message


@pytest.mark.parametrize("target", ["built", "unbuilt"])
@pytest.mark.parametrize(
    ("family", "factory"),
    [
        ("new", lambda: itk.IntrospectableAdagrad(0.1)),
        ("legacy", lambda: itk.IntrospectableLegacyAdagrad(0.1)),
    ],
    ids=["new", "legacy"],
)
def test_a_refused_checkpoint_never_offers_skip_mismatch(
    written: dict[str, Any], family: str, factory: Any, target: str
) -> None:
    """The checkpoint's own sentence, once: a tf.train.Checkpoint has no skip_mismatch."""
    model = make_model(seed=5)
    model.compile(factory(), loss="mse")
    if target == "built":
        _build(model)
    with pytest.raises(RefusedLoad) as raised:
        tf.train.Checkpoint(optimizer=model.optimizer).read(str(written[family])).expect_partial()
    message = str(raised.value)
    assert CHECKPOINT_SOURCE in message, message
    assert_keeps_state_once(message, CHECKPOINT)
    assert message.index(SAME_OPTIMIZER) < message.index(CHECKPOINT), message
