"""Queued state reaches every save path, for every optimizer class, resumed in a fresh process.

The generated matrix of docs/persistence.md ("How an unbuilt optimizer
loads"): for every optimizer class Keras exports, a trained optimizer's state
is loaded into an unbuilt twin {from a .weights.h5 file, from a
tf.train.Checkpoint} (so it waits for ``build``), saved again by {save_weights,
model.save, tf.train.Checkpoint, CheckpointManager, pickle}, then read back in
one fresh process, built, and stepped once: every variable, weight and the
applied rate must equal, bit for bit, those of the writer after the same step
(an uninterrupted run).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import KERAS_OPTIMIZERS

import introspect_opt

pytestmark = pytest.mark.extended  # .ci/run: `pytest -m extended`
TF = keras.backend.backend() == "tensorflow"
SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=1, decay_rate=0.9)
LOADS = ["file", "checkpoint"] if TF else ["file"]
SAVES = ["save_weights", "model.save", "pickle"] + (["checkpoint", "manager"] if TF else [])


def model_for(name: str) -> Any:
    """A small model with a matrix and a vector (factored and unfactored slots)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    model.compile(getattr(introspect_opt, f"Introspectable{name}")(SCHEDULE), loss="mse")
    return model


def step(model: Any) -> None:
    """One update with fixed gradients, eagerly."""
    grads = [
        keras.ops.convert_to_tensor(np.full(v.shape, 0.1 * (i + 1), "float32"))
        for i, v in enumerate(model.trainable_variables)
    ]
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))


def snapshot(model: Any) -> dict[str, np.ndarray]:
    optimizer = model.optimizer
    values = {
        f"var{i}": np.asarray(keras.ops.convert_to_numpy(v))
        for i, v in enumerate(optimizer._plain_variables())
    }
    values.update({f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())})
    values["rate"] = np.asarray(keras.ops.convert_to_numpy(optimizer.current_learning_rate))
    return values


_RESUME = r"""
import pickle, sys
from pathlib import Path
import numpy as np, keras
sys.path.insert(0, sys.argv[2])
from test_resume_matrix import model_for, snapshot, step

out = {}
for line in Path(sys.argv[1]).read_text().splitlines():
    case, name, save, where = line.split("\t")
    if save == "model.save":
        model = keras.models.load_model(where)
    elif save == "pickle":
        model = pickle.loads(Path(where).read_bytes())
    else:
        model = model_for(name)
        if save == "save_weights":
            model.load_weights(where)
        else:
            import tensorflow as tf
            checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
            checkpoint.read(where).assert_existing_objects_matched()
    step(model)
    for key, value in snapshot(model).items():
        out[f"{case}|{key}"] = value
np.savez(sys.argv[3], **out)
"""


def _save(save: str, model: Any, folder: Path) -> Path:
    if save == "save_weights":
        model.save_weights(folder / "m.weights.h5")
        return folder / "m.weights.h5"
    if save == "model.save":
        model.save(folder / "m.keras")
        return folder / "m.keras"
    if save == "pickle":
        (folder / "m.pickle").write_bytes(pickle.dumps(model))
        return folder / "m.pickle"
    import tensorflow as tf

    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    if save == "checkpoint":
        return Path(checkpoint.write(str(folder / "ck")))
    manager = tf.train.CheckpointManager(checkpoint, folder / "managed", max_to_keep=1)
    manager.save()  # the first one is rotated out by the second
    return Path(manager.save())


@pytest.fixture(scope="module")
def resumed(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Every (class, queued load, save path), written here and resumed in one fresh process."""
    root = tmp_path_factory.mktemp("resume")
    expected: dict[str, dict[str, np.ndarray]] = {}
    lines = []
    for name in KERAS_OPTIMIZERS:
        writer = model_for(name)
        step(writer)
        step(writer)
        source = root / name
        source.mkdir()
        writer.save_weights(source / "w.weights.h5")
        if TF:
            import tensorflow as tf

            ck = tf.train.Checkpoint(optimizer=writer.optimizer).write(str(source / "ck"))
        weights = writer.get_weights()
        step(writer)
        reference = snapshot(writer)
        for load in LOADS:
            for save in SAVES:
                case = f"{name}|{load}|{save}"
                folder = root / f"{len(expected)}"
                folder.mkdir()
                model = model_for(name)
                model.set_weights(weights)
                if load == "file":
                    model.load_weights(source / "w.weights.h5")
                else:
                    tf.train.Checkpoint(optimizer=model.optimizer).read(
                        ck
                    ).assert_existing_objects_matched()
                assert not model.optimizer.built, case  # the slots wait for build
                lines.append(f"{case}\t{name}\t{save}\t{_save(save, model, folder)}")
                expected[case] = reference
    listing = root / "cases.tsv"
    listing.write_text("\n".join(lines))
    result = root / "resumed.npz"
    done = subprocess.run(
        [sys.executable, "-c", _RESUME, str(listing), str(Path(__file__).parent), str(result)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    with np.load(result) as data:
        return expected, {key: data[key] for key in data.files}


CASES = [(n, load, save) for n in KERAS_OPTIMIZERS for load in LOADS for save in SAVES]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "load", "save"), CASES, ids=["-".join(c) for c in CASES])
def test_queued_state_survives_every_save_path(
    resumed: tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]],
    name: str,
    load: str,
    save: str,
) -> None:
    """Loaded into an unbuilt optimizer, saved, resumed elsewhere: the run goes on bit for bit."""
    expected, got = resumed
    case = f"{name}|{load}|{save}"
    mine = {k.split("|", 3)[3]: v for k, v in got.items() if k.startswith(f"{case}|")}
    assert sorted(mine) == sorted(expected[case]), case
    for key, value in expected[case].items():
        assert mine[key].dtype == value.dtype and mine[key].tobytes() == value.tobytes(), (
            f"{case}: {key} differs from the uninterrupted run: {mine[key]} vs {value}"
        )
