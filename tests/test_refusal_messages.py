"""A refused load says once how to keep the optimizer's current state, in the source's own terms.

A file offers ``skip_mismatch=True`` (tf_keras also ``load_model(path,
compile=False)``); a tf.train.Checkpoint has no ``skip_mismatch`` and says
what to do instead. The tf_keras world's loads are checked in
``tests/tf_keras/test_tfk_refusal_messages.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
from helpers import SCHEDULE, make_data, make_model, sync

from introspect_opt import IntrospectableAdagrad, IntrospectableAdam, IntrospectableSGD
from introspect_opt._common.errors import CHECKPOINT_SOURCE, KeepState, refused_load

KERAS3_FILE = (
    "To load the model weights and keep this optimizer's current state, use "
    "`model.load_weights(path, skip_mismatch=True)`."
)
TF_KERAS_FILE = (
    "To load the model weights and keep this optimizer's current state, use "
    "`model.load_weights(path, skip_mismatch=True)` (or `load_model(path, compile=False)`)."
)
CHECKPOINT = (
    "A tf.train.Checkpoint has no skip_mismatch: restore it into an optimizer like the one "
    "that wrote it, or leave the optimizer out of the tf.train.Checkpoint you restore into "
    "(that keeps its current state)."
)
SAME_OPTIMIZER = (
    "Create the optimizer with the same class and arguments as the one that wrote the file "
    "(for example the same `momentum`, `use_ema` and `gradient_accumulation_steps`) for the "
    "same model."
)
STATE = "optimizer/_introspection_state/vars"


def assert_keeps_state_once(message: str, sentence: str) -> None:
    """``sentence`` is the message's only advice on keeping the current state."""
    assert message.count(sentence) == 1, message
    assert message.count("current state") == 1, message
    if sentence == CHECKPOINT:
        assert "skip_mismatch=True" not in message, message
        assert "load_weights" not in message, message


@pytest.mark.parametrize(
    ("keep_state", "file_sentence"),
    [(KeepState.KERAS3, KERAS3_FILE), (KeepState.TF_KERAS, TF_KERAS_FILE)],
    ids=["keras3", "tf_keras"],
)
def test_the_builder_picks_the_sentence_for_the_source(
    keep_state: KeepState, file_sentence: str
) -> None:
    """Each world's file sentence for a file, the checkpoint's for a checkpoint, after the fix."""
    for source, sentence in [("/tmp/m.weights.h5", file_sentence), (CHECKPOINT_SOURCE, CHECKPOINT)]:
        error = refused_load(
            "IntrospectableSGD 'sgd'",
            source,
            "it was written by an Adam optimizer. Nothing was loaded into the optimizer.",
            "Create the optimizer with the same class.",
            keep_state=keep_state,
        )
        assert str(error) == (
            f"Cannot restore IntrospectableSGD 'sgd' from {source}: it was written by an "
            "Adam optimizer. Nothing was loaded into the optimizer. Create the optimizer "
            f"with the same class. {sentence}"
        )
        bare = refused_load("the applied learning rate", source, "damaged.", keep_state=keep_state)
        assert (
            str(bare)
            == f"Cannot restore the applied learning rate from {source}: damaged. {sentence}"
        )
        assert str(refused_load("x", source, "quoted.", keep_state=None)) == (
            f"Cannot restore x from {source}: quoted."
        )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trained IntrospectableSGD with momentum: its file and checkpoint; a plain SGD's file."""
    folder = tmp_path_factory.mktemp("written")
    x, y = make_data(32)
    paths: dict[str, Any] = {}
    for label, optimizer in [
        ("ours", IntrospectableSGD(SCHEDULE, momentum=0.9)),
        ("plain", keras.optimizers.SGD(0.1, momentum=0.9)),
    ]:
        model = make_model()
        model.compile(optimizer, loss="mse")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        sync(model)
        paths[label] = folder / f"{label}.weights.h5"
        model.save_weights(paths[label])
        if label == "ours" and keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            paths["checkpoint"] = tf.train.Checkpoint(optimizer=model.optimizer).write(
                str(folder / "ck")
            )
    return paths


def _damage(source: Path, folder: Path, damage: str) -> Path:
    path = folder / f"{damage.replace(' ', '_')}.weights.h5"
    path.write_bytes(source.read_bytes())
    with h5py.File(path, "r+") as f:
        if damage == "manifest not JSON":
            del f[f"{STATE}/manifest"]
            f[f"{STATE}/manifest"] = np.frombuffer(b"{not json", np.uint8)
        else:  # "rate not a scalar"
            del f[f"{STATE}/applied_learning_rate"]
            f[f"{STATE}/applied_learning_rate"] = np.zeros(3, np.float32)
    return path


@pytest.mark.parametrize(
    ("case", "factory", "fix"),
    [
        ("another class", lambda: IntrospectableAdagrad(0.1), SAME_OPTIMIZER),
        ("another layout", lambda: IntrospectableSGD(SCHEDULE), SAME_OPTIMIZER),
        ("plain file, other variables", lambda: IntrospectableAdam(SCHEDULE), SAME_OPTIMIZER),
        ("manifest not JSON", lambda: IntrospectableSGD(SCHEDULE, momentum=0.9), ""),
        ("rate not a scalar", lambda: IntrospectableSGD(SCHEDULE, momentum=0.9), ""),
    ],
    ids=["another class", "another layout", "plain file", "manifest not JSON", "rate not a scalar"],
)
def test_a_refused_file_says_skip_mismatch_once(
    written: dict[str, Any], tmp_path: Path, case: str, factory: Any, fix: str
) -> None:
    """Mismatched or damaged: one keep-state sentence (after the fix to make it match, if any)."""
    path = written["plain" if case.startswith("plain") else "ours"]
    if fix == "":
        path = _damage(path, tmp_path, case)
    model = make_model(seed=5)
    model.compile(factory(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    with pytest.raises(ValueError) as raised:
        model.load_weights(path)
    message = str(raised.value)
    assert f"Cannot restore {type(model.optimizer).__name__} " in message or (
        "Cannot restore the " in message
    ), message
    assert path.name in message, message
    assert_keeps_state_once(message, KERAS3_FILE)
    assert CHECKPOINT not in message
    if fix:  # what makes it match, then how to keep the current state instead
        assert message.index(fix) < message.index(KERAS3_FILE), message
    else:  # damage: nothing makes it match
        assert "Create the optimizer" not in message, message


@pytest.mark.tf_only
@pytest.mark.parametrize("target", ["built", "unbuilt"])
@pytest.mark.parametrize(
    ("case", "factory"),
    [
        ("another class", lambda: IntrospectableAdagrad(0.1)),
        ("another layout", lambda: IntrospectableSGD(SCHEDULE)),
    ],
    ids=["another class", "another layout"],
)
def test_a_refused_checkpoint_never_offers_skip_mismatch(
    written: dict[str, Any], case: str, factory: Any, target: str
) -> None:
    """The checkpoint's own sentence, once: a tf.train.Checkpoint has no skip_mismatch."""
    import tensorflow as tf

    model = make_model(seed=5)
    model.compile(factory(), loss="mse")
    if target == "built":
        model.optimizer.build(model.trainable_variables)
    with pytest.raises(ValueError) as raised:
        tf.train.Checkpoint(optimizer=model.optimizer).read(
            str(written["checkpoint"])
        ).expect_partial()
    message = str(raised.value)
    assert CHECKPOINT_SOURCE in message, message
    assert_keeps_state_once(message, CHECKPOINT)
    assert message.index(SAME_OPTIMIZER) < message.index(CHECKPOINT), message
