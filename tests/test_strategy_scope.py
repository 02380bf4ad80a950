"""Saving, loading and our callbacks give inside `strategy.scope()` what they give outside it.

Inside the scope TensorFlow reads a distributed variable in cross-replica
context, where ``np.asarray`` on a rank-0 ``MirroredVariable`` fails ("object
__array__ method not producing an array"): a model built under a strategy
trained and saved fine when ``fit`` and ``save`` were called outside the
scope, and raised at the first save or epoch end when called inside it.

The matrix runs the same training twice on a ``MirroredStrategy`` over two
logical CPUs, with every opt-in feature on (rate history, diagnostics, plateau
multiplier): once with ``fit`` and every save called outside the scope, once
inside. Each row compares one thing the two runs wrote (files entry by entry,
bit for bit; logs value by value) and loads what the inside run wrote, inside
the scope, back into fresh objects. A second test does the same per optimizer
class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import bits, make_data, make_model, optimizer_state, weights_of
from test_distributed import mirrored_strategy

import introspect_opt
from introspect_opt import (
    IntrospectableAdam,
    LearningRateLogger,
    RateHistoryToTensorBoard,
    ScaleLearningRateOnPlateau,
    keep_rate_history,
    record_diagnostics,
)

pytestmark = pytest.mark.tf_only

SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=1, decay_rate=0.9)
INPUTS, HIDDEN = 4, 4
BATCH, EPOCHS = 8, 2  # 2 updates per epoch, 4 examples per replica
EXAMPLES = 2 * BATCH
HISTORY = 4
PLATEAU = "adam/learning_rate_multiplier"
# Not training state: a file creates only the features that are (history, multiplier).
DIAGNOSTICS = {"gradient_norm", "update_norm", "update_to_weight_ratio"}
# Every class; all but two run with the slow tests (a second or two each).
OPTIMIZER_CLASSES = [
    name
    if name in ("IntrospectableSGD", "IntrospectableAdam")
    else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(introspect_opt.__all__)
    if name.startswith("Introspectable") and name != "IntrospectableOptimizer"
]


def _context(strategy: Any, inside: bool) -> Any:
    return strategy.scope() if inside else contextlib.nullcontext()


# --- reading what was written ------------------------------------------------


def _h5_entries(source: Any) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every dataset of an HDF5 file (path or file object): (dtype, shape, bytes) by path."""
    entries: dict[str, tuple[str, tuple[int, ...], bytes]] = {}

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            value = np.asarray(item[()])
            entries[name] = (str(value.dtype), value.shape, value.tobytes())

    with h5py.File(source, "r") as file:
        file.visititems(visit)
    return entries


def _without_object_ids(config: Any) -> Any:
    """A config without Keras's ``shared_object_id`` entries (``id()`` of objects in memory)."""
    if isinstance(config, dict):
        return {k: _without_object_ids(v) for k, v in config.items() if k != "shared_object_id"}
    if isinstance(config, list):
        return [_without_object_ids(v) for v in config]
    return config


def _keras_file(path: Path) -> dict[str, Any]:
    """A ``.keras`` file's config and weight entries (its metadata holds the save time)."""
    with zipfile.ZipFile(path) as archive:
        config = _without_object_ids(json.loads(archive.read("config.json")))
        weights = _h5_entries(io.BytesIO(archive.read("model.weights.h5")))
    return {"config": config, "weights": weights}


def _checkpoint(prefix: Path) -> dict[str, tuple[str, bytes]]:
    """Every tensor of a tf.train.Checkpoint: (dtype, bytes) by key."""
    reader = tf.train.load_checkpoint(str(prefix))
    tensors = {}
    for key in reader.get_variable_to_shape_map():
        value = np.asarray(reader.get_tensor(key))
        tensors[key] = (str(value.dtype), value.tobytes())
    return tensors


def _directory(path: Path) -> dict[str, Any]:
    """Every file under ``path`` by relative name: HDF5 entries, JSON, or bytes."""
    files: dict[str, Any] = {}
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        name = str(item.relative_to(path))
        if item.name.endswith(".h5"):
            files[name] = _h5_entries(item)
        elif item.name.endswith(".json"):
            files[name] = json.loads(item.read_text())
        else:
            files[name] = item.read_bytes()
    return files


def _event_scalars(log_dir: Path) -> dict[str, list[tuple[int, bytes]]]:
    """Every scalar in the TensorBoard event files under ``log_dir``: (step, bytes) by tag."""
    scalars: dict[str, list[tuple[int, bytes]]] = {}
    for path in glob.glob(str(log_dir / "**" / "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = np.asarray(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, []).append((event.step, number.tobytes()))
    return {tag: sorted(values) for tag, values in scalars.items()}


def _state(model: Any) -> dict[str, Any]:
    """A model's weights and its optimizer's whole state, as bytes (read outside any scope)."""
    optimizer = model.optimizer
    entries = optimizer._introspection_state.entries()  # rate, count and every feature's
    return {
        "weights": [w.tobytes() for w in weights_of(model)],
        "optimizer": [np.asarray(v).tobytes() for v in optimizer_state(optimizer)],
        "introspection": {k: (str(v.dtype), v.tobytes()) for k, v in entries.items()},
        "rate": bits(optimizer.current_learning_rate),
    }


def _assert_restored(restored: Any, original: Any) -> None:
    """Everything restored bit for bit (diagnostics where the restored optimizer records them)."""
    expected = _state(original)
    if not restored.optimizer._introspection_state.has("diagnostics"):
        introspection = expected["introspection"].items()
        expected["introspection"] = {k: v for k, v in introspection if k not in DIAGNOSTICS}
    assert _state(restored) == expected


# --- the two runs -------------------------------------------------------------


class _Logs(keras.callbacks.Callback):
    """Every batch's and epoch's logs, as the callbacks before it left them."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[dict[str, float]] = []
        self.epochs: list[dict[str, float]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.batches.append({k: float(v) for k, v in (logs or {}).items()})

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.epochs.append({k: float(v) for k, v in (logs or {}).items()})


@dataclasses.dataclass
class _Run:
    model: Any
    logs: _Logs
    directory: Path


def _compiled(strategy: Any, optimizer_class: type = IntrospectableAdam) -> Any:
    """A model and optimizer made in the scope, the optimizer's opt-in features on."""
    with strategy.scope():
        model = make_model(seed=0, inputs=INPUTS, hidden=HIDDEN)
        optimizer = optimizer_class(SCHEDULE)
        keep_rate_history(optimizer, HISTORY)
        record_diagnostics(optimizer)
        model.compile(optimizer, loss="mse")
    return model


def _train_and_save(strategy: Any, directory: Path, inside: bool) -> _Run:
    # The same layer and variable names in both runs: files record them.
    keras.backend.clear_session(free_memory=False)
    model = _compiled(strategy)
    logs = _Logs()
    callbacks = [
        ScaleLearningRateOnPlateau("loss", factor=0.5, patience=0, min_delta=1e9),
        LearningRateLogger("batch", hyperparameters=("beta_1",), diagnostics=True),
        logs,
        RateHistoryToTensorBoard(directory / "tensorboard"),
        keras.callbacks.ModelCheckpoint(str(directory / "epoch{epoch}.keras")),
        keras.callbacks.BackupAndRestore(str(directory / "backup"), delete_checkpoint=False),
    ]
    x, y = make_data(EXAMPLES, inputs=INPUTS)
    with _context(strategy, inside):
        model.fit(
            x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks
        )
        model.save_weights(directory / "model.weights.h5")
        model.save(directory / "model.keras")
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
            str(directory / "checkpoint" / "ckpt")
        )
    return _Run(model, logs, directory)


@pytest.fixture(scope="module")
def strategy() -> Any:
    return mirrored_strategy(2)


@pytest.fixture(scope="module")
def runs(strategy: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[bool, _Run]:
    """The same training, saved the same ways: outside (False) and inside (True) the scope."""
    return {
        inside: _train_and_save(strategy, tmp_path_factory.mktemp(f"inside_{inside}"), inside)
        for inside in (False, True)
    }


# --- loading, inside the scope --------------------------------------------------


def _load_weights(strategy: Any, path: Path) -> Any:
    """Into a fresh model whose optimizer is not built yet (state waits for build)."""
    model = _compiled(strategy)
    with strategy.scope():
        model.load_weights(path)
        model.optimizer.build(model.trainable_variables)
    return model


def _load_model(strategy: Any, path: Path) -> Any:
    with strategy.scope():
        return keras.models.load_model(path)


def _restore_checkpoint(
    strategy: Any, prefix: Path, optimizer_class: type = IntrospectableAdam
) -> Any:
    """Into a fresh optimizer that is not built yet (deferred restoration)."""
    model = _compiled(strategy, optimizer_class)
    with strategy.scope():
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        status = checkpoint.read(str(prefix))
        model.optimizer.build(model.trainable_variables)
        status.assert_existing_objects_matched()
    return model


def _resume_from_backup(strategy: Any, backup: Path) -> Any:
    """A fresh model resumed by BackupAndRestore after the last epoch: nothing left to train."""
    model = _compiled(strategy)
    x, y = make_data(EXAMPLES, inputs=INPUTS)
    with strategy.scope():
        history = model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)],
        )
    assert history.history == {}  # every epoch was done
    return model


# --- the matrix -------------------------------------------------------------------

_Written = Callable[[Path], Any]
_Reloaded = Callable[[Any, Path], Any]


@dataclasses.dataclass(frozen=True)
class _Row:
    written: _Written  # what the run left (comparable)
    reload: _Reloaded | None = None  # loads the inside run's file, inside the scope


def _logged(run: _Run, keys: Callable[[str], bool]) -> dict[str, Any]:
    batches = [{k: v for k, v in logs.items() if keys(k)} for logs in run.logs.batches]
    epochs = [{k: v for k, v in logs.items() if keys(k)} for logs in run.logs.epochs]
    return {"batches": batches, "epochs": epochs}


ROWS: dict[str, _Row] = {
    "save_weights": _Row(
        lambda d: _h5_entries(d / "model.weights.h5"),
        lambda s, d: _load_weights(s, d / "model.weights.h5"),
    ),
    "model.save": _Row(
        lambda d: _keras_file(d / "model.keras"),
        lambda s, d: _load_model(s, d / "model.keras"),
    ),
    "ModelCheckpoint": _Row(
        lambda d: [_keras_file(d / f"epoch{e}.keras") for e in range(1, EPOCHS + 1)],
        lambda s, d: _load_model(s, d / f"epoch{EPOCHS}.keras"),
    ),
    "BackupAndRestore": _Row(
        lambda d: _directory(d / "backup"),
        lambda s, d: _resume_from_backup(s, d / "backup"),
    ),
    "tf.train.Checkpoint": _Row(
        lambda d: _checkpoint(d / "checkpoint" / "ckpt"),
        lambda s, d: _restore_checkpoint(s, d / "checkpoint" / "ckpt"),
    ),
    "RateHistoryToTensorBoard": _Row(lambda d: _event_scalars(d / "tensorboard")),
}
LOGGED: dict[str, Callable[[str], bool]] = {
    "LearningRateLogger": lambda key: key.startswith("adam/") and key != PLATEAU,
    "ScaleLearningRateOnPlateau": lambda key: key == PLATEAU,
}


@pytest.mark.slow
def test_both_runs_trained_alike(runs: dict[bool, _Run]) -> None:
    """The two runs end in the same state, bit for bit: the rows compare like with like."""
    assert _state(runs[True].model) == _state(runs[False].model)
    assert runs[True].logs.epochs == runs[False].logs.epochs


@pytest.mark.slow  # two fits under the strategy (the fixture), shared by the matrix
@pytest.mark.parametrize("row", sorted(ROWS))
def test_files_are_the_same_inside_the_scope(
    strategy: Any, runs: dict[bool, _Run], row: str
) -> None:
    """What a save path wrote inside the scope equals, bit for bit, what it wrote outside."""
    written = ROWS[row].written
    inside, outside = written(runs[True].directory), written(runs[False].directory)
    assert inside, f"{row} wrote nothing"
    assert inside == outside
    reload = ROWS[row].reload
    if reload is not None:
        _assert_restored(reload(strategy, runs[True].directory), runs[True].model)


@pytest.mark.slow
@pytest.mark.parametrize("callback", sorted(LOGGED))
def test_logs_are_the_same_inside_the_scope(runs: dict[bool, _Run], callback: str) -> None:
    """What our callbacks logged inside the scope equals what they logged outside."""
    inside = _logged(runs[True], LOGGED[callback])
    assert inside == _logged(runs[False], LOGGED[callback])
    assert all(inside["epochs"]), f"{callback} logged nothing"
    if callback == "ScaleLearningRateOnPlateau":
        assert [e[PLATEAU] for e in inside["epochs"]] == [1.0, 0.5]
    else:
        assert {"adam/learning_rate", "adam/beta_1", "adam/gradient_norm"} <= set(
            inside["batches"][0]
        )


# --- every optimizer class ---------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZER_CLASSES)
def test_every_optimizer_saves_and_loads_inside_the_scope(
    strategy: Any, tmp_path: Path, name: str
) -> None:
    """Each class: what it saves inside the scope equals what it saves outside, and loads in it."""
    optimizer_class = getattr(introspect_opt, name)
    model = _compiled(strategy, optimizer_class)
    optimizer = model.optimizer
    with strategy.scope():
        optimizer.build(model.trainable_variables)
    variables = model.trainable_variables
    gradients = [keras.ops.full(v.shape, 0.1 * (i + 1)) for i, v in enumerate(variables)]
    for _ in range(2):  # two real updates, eagerly, in replica context
        strategy.run(lambda: optimizer.apply_gradients(zip(gradients, variables, strict=True)))
    assert int(optimizer.iterations.numpy()) == 2
    for inside in (False, True):
        with _context(strategy, inside):
            model.save_weights(tmp_path / f"{inside}.weights.h5")
            model.save(tmp_path / f"{inside}.keras")
            tf.train.Checkpoint(model=model, optimizer=optimizer).write(str(tmp_path / f"{inside}"))
    assert _checkpoint(tmp_path / "True") == _checkpoint(tmp_path / "False")
    assert _h5_entries(tmp_path / "True.weights.h5") == _h5_entries(tmp_path / "False.weights.h5")
    assert _keras_file(tmp_path / "True.keras") == _keras_file(tmp_path / "False.keras")
    with strategy.scope():
        loaded = keras.models.load_model(tmp_path / "True.keras")
    fresh = _compiled(strategy, optimizer_class)
    with strategy.scope():
        fresh.load_weights(tmp_path / "True.weights.h5")  # into an unbuilt optimizer
        waiting = bits(fresh.optimizer.current_learning_rate)  # the file's, before the build
        fresh.optimizer.build(fresh.trainable_variables)
    assert waiting == bits(optimizer.current_learning_rate)
    assert type(loaded.optimizer) is optimizer_class
    _assert_restored(loaded, model)
    _assert_restored(fresh, model)
    _assert_restored(_restore_checkpoint(strategy, tmp_path / "True", optimizer_class), model)
