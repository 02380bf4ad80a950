"""Nothing lost, proven: generated matrices of loads and saves, faults included.

Load matrix: formats {``.weights.h5``, ``.keras`` (``load_weights``),
``BackupAndRestore`` directory} x targets {built, unbuilt, unbuilt with a
queued load} x files {damaged in every way we could think of, written by other
optimizers, written with other features}. Each case has one of two outcomes,
checked bit for bit on every optimizer variable and the cached rate, and then
on one more update (the state the next step starts from):

* restored exactly, or
* raised, with a message naming the file and the fix, and nothing changed.

Save matrix: every save path x {built, right after a ``tf.train.Checkpoint``
restore into an unbuilt optimizer, right after a file load into an unbuilt
one} -> reloaded in a fresh process and compared with what the process held.

The rules are stated in docs/persistence.md ("Guarantees").
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest

from introspect_opt import IntrospectableSGD, keep_rate_history, record_diagnostics

# Whole matrices and a subprocess: `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

BACKEND = keras.backend.backend()
SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.9)
GRADS = [np.full((3, 2), 0.5, "float32"), np.full((2,), -0.25, "float32")]
STATE = "optimizer/_introspection_state/vars"


def tiny_model() -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def step(optimizer: Any, model: Any, times: int = 1) -> None:
    """Applies ``times`` updates with fixed gradients, eagerly (no tracing)."""
    for _ in range(times):
        optimizer.apply_gradients(
            [
                (keras.ops.convert_to_tensor(g), v)
                for g, v in zip(GRADS, model.trainable_variables, strict=True)
            ]
        )


def snapshot(model: Any) -> dict[str, np.ndarray]:
    """Every optimizer variable, the model's weights and the applied rate, as held now.

    For a plain optimizer the applied rate is what the contract says it was,
    ``s(n - 1)``, evaluated eagerly.
    """
    optimizer = model.optimizer
    plain = getattr(optimizer, "_plain_variables", lambda: optimizer.variables)()
    values = {f"var{i}": np.asarray(keras.ops.convert_to_numpy(v)) for i, v in enumerate(plain)}
    values.update({f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())})
    if hasattr(optimizer, "current_learning_rate"):
        rate = optimizer.current_learning_rate
    else:
        rate = SCHEDULE(int(keras.ops.convert_to_numpy(optimizer.iterations)) - 1)
    values["rate"] = np.asarray(keras.ops.convert_to_numpy(rate), "float32")
    return values


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], keys: Any) -> None:
    for key in keys:
        assert key in got, f"{key} missing; have {sorted(got)}"
        assert got[key].shape == expected[key].shape, key
        assert got[key].tobytes() == expected[key].tobytes(), key


# --- sources: files written by real optimizers ------------------------------------------------


def _source(kind: str) -> Any:
    model = tiny_model()
    optimizers: dict[str, Callable[[], Any]] = {
        "ours": lambda: IntrospectableSGD(SCHEDULE, momentum=0.9),
        "plain": lambda: keras.optimizers.SGD(SCHEDULE, momentum=0.9),
        "adam": lambda: keras.optimizers.Adam(SCHEDULE),
        "no_momentum": lambda: IntrospectableSGD(SCHEDULE),
        "history": lambda: keep_rate_history(IntrospectableSGD(SCHEDULE, momentum=0.9), 8),
        "diagnostics": lambda: record_diagnostics(IntrospectableSGD(SCHEDULE, momentum=0.9)),
    }
    model.compile(optimizers[kind](), loss="mse")
    model.optimizer.build(model.trainable_variables)
    step(model.optimizer, model, 3)
    return model


class Source:
    """A file written by a real optimizer, and what loading it must give."""

    def __init__(self, kind: str, folder: Path) -> None:
        writer = _source(kind)
        self.path = folder / f"{kind}.weights.h5"
        writer.save_weights(self.path)
        self.keras = folder / f"{kind}.keras"
        writer.save(self.keras)
        self.writer = writer
        self.loaded = snapshot(writer)
        again = _source(kind)
        step(again.optimizer, again)
        self.next = snapshot(again)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    """Each source kind's files and expectations."""
    folder = tmp_path_factory.mktemp("sources")
    kinds = ("ours", "plain", "adam", "no_momentum", "history", "diagnostics")
    return {kind: Source(kind, folder) for kind in kinds}


# --- damage: each a change to an HDF5 weights file ---------------------------------------------


def _drop(key: str) -> Callable[[h5py.File], None]:
    def damage(f: h5py.File) -> None:
        del f[key]

    return damage


def _set(key: str, value: Any) -> Callable[[h5py.File], None]:
    def damage(f: h5py.File) -> None:
        if key in f:
            del f[key]
        f[key] = value

    return damage


DAMAGES: dict[str, Callable[[h5py.File], None] | None] = {
    "state entry missing": _drop(f"{STATE}/update_count"),
    "state extra entry": _set(f"{STATE}/bogus", 1.0),
    "rate as a string": _set(f"{STATE}/applied_learning_rate", b"abc"),
    "rate as a vector": _set(f"{STATE}/applied_learning_rate", np.float32([0.1, 0.2])),
    "count as a float": _set(f"{STATE}/update_count", np.float32(3.0)),
    "slot of another shape": _set("optimizer/vars/2", np.zeros((4, 2), "float32")),
    "slot as a string": _set("optimizer/vars/2", b"xyz"),
    "slot an empty dataset": _set("optimizer/vars/2", h5py.Empty("f4")),
    "iterations as a float": _set("optimizer/vars/0", np.float32(3.0)),
    "numbered entry missing": _drop("optimizer/vars/1"),
    "optimizer entry renamed": _set("optimizer/vars/momentum", np.zeros((3, 2), "float32")),
    "truncated file": None,  # handled below: the HDF5 file cut in half
}
# Files that are fine, written by other optimizers: (source kind, outcome).
# Files whose layout only a build can check: into an unbuilt optimizer they
# wait for the build (the optimizer may train part of its model), which raises.
CHECKED_AT_BUILD = {"slot of another shape", "Adam file", "SGD without momentum"}
FOREIGN = {
    "plain SGD file": ("plain", "restored"),
    "Adam file": ("adam", "raised"),
    "SGD without momentum": ("no_momentum", "raised"),
    "with a rate history": ("history", "restored"),
    "with diagnostics": ("diagnostics", "restored"),
}


def _damaged_weights(source: Path, damage: str, folder: Path) -> Path:
    path = folder / "damaged.weights.h5"
    shutil.copy(source, path)
    change = DAMAGES[damage]
    if change is None:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        with h5py.File(path, "a") as f:
            change(f)
    return path


def _as_keras_file(weights: Path, template: Path, folder: Path) -> Path:
    """A copy of the .keras file ``template`` whose weights member is ``weights``."""
    path = folder / "damaged.keras"
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(path, "w") as out:
        for item in source.infolist():
            data = source.read(item.filename)
            out.writestr(
                item, weights.read_bytes() if item.filename == "model.weights.h5" else data
            )
    return path


# --- targets: the optimizer a file is loaded into -------------------------------------------


def make_target(kind: str, queued_from: Any) -> Any:
    """A compiled model whose optimizer is built, unbuilt, or unbuilt with a queued load."""
    model = tiny_model()
    if kind == "queued":
        # An optimizer unpickled on its own holds its state queued until built.
        optimizer = pickle.loads(pickle.dumps(queued_from.optimizer))
        assert not optimizer.built and optimizer._introspection_state.pending is not None
    else:
        optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
    model.compile(optimizer, loss="mse")
    if kind == "built":
        optimizer.build(model.trainable_variables)
        step(optimizer, model, 2)  # state of its own, different from every file's
    return model


def settled(model: Any) -> dict[str, np.ndarray]:
    """The state the next step starts from: the optimizer built as fit would build it."""
    model.optimizer.build(model.trainable_variables)
    return snapshot(model)


class Captured(Exception):
    """Raised by ``Capture`` to stop fit right after BackupAndRestore restored."""


class Capture(keras.callbacks.Callback):
    """Stops fit at on_train_begin, after the callbacks before it (BackupAndRestore) ran."""

    def on_train_begin(self, logs: Any = None) -> None:
        raise Captured


def load(fmt: str, model: Any, path: Path, folder: Path) -> None:
    if fmt in ("weights.h5", "keras"):
        model.load_weights(path)
        return
    backup = folder / "backup"
    backup.mkdir(exist_ok=True)
    shutil.copy(path, backup / "latest.weights.h5")
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 0, "batch": -1}))
    x = np.ones((4, 3), "float32")
    try:
        model.fit(
            x,
            x[:, :2],
            epochs=2,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(backup), Capture()],
        )
    except Captured:
        return


# fit builds the optimizer before BackupAndRestore loads: only "built" applies there.
FORMAT_TARGETS = [
    (fmt, target)
    for fmt in ("weights.h5", "keras", "backup")
    for target in ("built", "unbuilt", "queued")
    if fmt != "backup" or target == "built"
]
CASES = [(name, "damage") for name in DAMAGES] + [(name, "foreign") for name in FOREIGN]
OPTIMIZER_KEYS = ("var", "rate")


@pytest.mark.parametrize(
    ("fmt", "target"), FORMAT_TARGETS, ids=[f"{f}-{t}" for f, t in FORMAT_TARGETS]
)
@pytest.mark.parametrize(("case", "kind"), CASES, ids=[c for c, _ in CASES])
def test_load_restores_exactly_or_raises_and_changes_nothing(
    sources: dict[str, Source], tmp_path: Path, fmt: str, target: str, case: str, kind: str
) -> None:
    """One cell of the load matrix: restored bit for bit, or an error and no change at all."""
    if kind == "damage":
        source, outcome = sources["ours"], "raised"
        path = _damaged_weights(source.path, case, tmp_path)
    else:
        source_kind, outcome = FOREIGN[case]
        source = sources[source_kind]
        path = source.path
    if fmt == "keras":
        path = _as_keras_file(path, source.keras, tmp_path)
    model = make_target(target, sources["ours"].writer)
    if outcome == "restored":
        load(fmt, model, path, tmp_path)
        got = settled(model)
        assert_same(got, source.loaded, [k for k in source.loaded if k.startswith(("var", "w"))])
        assert got["rate"].tobytes() == source.loaded["rate"].tobytes()
        step(model.optimizer, model)
        assert_same(snapshot(model), source.next, source.next)
        return
    twin = make_target(target, sources["ours"].writer)
    with pytest.raises((ValueError, OSError)) as caught:
        load(fmt, model, path, tmp_path)
        if target != "built" and case in CHECKED_AT_BUILD:
            model.optimizer.build(model.trainable_variables)  # queued: checked here
    message = str(caught.value)
    if case == "truncated file":
        # h5py refuses the file when Keras opens it, before any state is read
        # (its message has no file name: documented in docs/persistence.md).
        assert "truncated file" in message, message
    else:
        assert (path.name if fmt != "backup" else "latest.weights.h5") in message, message
        assert "nothing was loaded into the optimizer" in message.lower(), message
        assert "skip_mismatch=True" in message, message  # the way to keep training
    got, expected = settled(model), settled(twin)
    assert_same(got, expected, [k for k in expected if k.startswith(OPTIMIZER_KEYS)])
    # Keras loads layer weights before optimizer state; the next update, from
    # the same weights, is the one the optimizer would have made without the load.
    twin.set_weights(model.get_weights())
    step(model.optimizer, model)
    step(twin.optimizer, twin)
    assert_same(snapshot(model), snapshot(twin), snapshot(twin))


@pytest.mark.parametrize("damage", [d for d in DAMAGES if d != "optimizer entry renamed"])
def test_load_model_of_a_damaged_file_names_it(
    sources: dict[str, Source], tmp_path: Path, damage: str
) -> None:
    """keras.models.load_model of a damaged .keras file: an error naming the file."""
    weights = _damaged_weights(sources["ours"].path, damage, tmp_path)
    path = _as_keras_file(weights, sources["ours"].keras, tmp_path)
    with pytest.raises((ValueError, OSError)) as caught:
        keras.models.load_model(path)
    if damage != "truncated file":  # h5py's own refusal names no file
        # load_model hands the optimizer an in-memory copy of the weights when
        # memory allows; nothing in it says where it came from (and no code of
        # ours reads Keras's locals to find out), so the message says which
        # kind of file: the one load_model was called with.
        message = str(caught.value)
        assert str(path) in message or "the .keras file being loaded" in message, message


# --- Mixed precision: a LossScaleOptimizer loads the wrapped optimizer's variables first ---------

# Under mixed_float16 the file holds the wrapper's group (its own 4 variables,
# then the wrapped optimizer's, then on JAX the state's) and the wrapped
# optimizer's group, with the state's group inside it. Keras loads the
# wrapper's group first.
WRAPPER_GROUPS = {
    "wrapper": ("optimizer/vars", 4),  # (group, index of the wrapped optimizer's first entry)
    "wrapped": ("optimizer/inner_optimizer/vars", 0),
}
WRAPPED_STATE = "optimizer/inner_optimizer/_introspection_state/vars"


def _append(group: str) -> Callable[[h5py.File], None]:
    def damage(f: h5py.File) -> None:
        f[f"{group}/{len(f[group])}"] = np.float32(1.0)

    return damage


def _drop_last(group: str, count: int = 1) -> Callable[[h5py.File], None]:
    def damage(f: h5py.File) -> None:
        for _ in range(count):
            del f[f"{group}/{len(f[group]) - 1}"]

    return damage


def _swap(group: str, i: int, j: int) -> Callable[[h5py.File], None]:
    def damage(f: h5py.File) -> None:
        first, second = np.asarray(f[f"{group}/{i}"]), np.asarray(f[f"{group}/{j}"])
        del f[f"{group}/{i}"], f[f"{group}/{j}"]
        f[f"{group}/{i}"], f[f"{group}/{j}"] = second, first

    return damage


def _remove_and_append(group: str, index: int) -> Callable[[h5py.File], None]:
    """Entry ``index`` gone, the ones after it moved up, a scalar appended: same length."""

    def damage(f: h5py.File) -> None:
        count = len(f[group])
        kept = [np.asarray(f[f"{group}/{i}"]) for i in range(count) if i != index]
        del f[group]
        for i, value in enumerate([*kept, np.float32(2.0)]):
            f[f"{group}/{i}"] = value

    return damage


def _as_written_on_another_backend(f: h5py.File) -> None:
    """On JAX the wrapper's group ends with the state's entries; elsewhere it does not."""
    group, state = f["optimizer/vars"], f[WRAPPED_STATE]
    variables = sorted(key for key in state if key != "manifest")  # the manifest is no variable
    if BACKEND == "jax":
        for _ in variables:
            del group[str(len(group) - 1)]
    else:
        for key in variables:
            group[str(len(group))] = np.asarray(state[key])


def _wrapper_damages() -> dict[str, Callable[[h5py.File], None]]:
    damages: dict[str, Callable[[h5py.File], None]] = {
        "state: rate as a string": _set(f"{WRAPPED_STATE}/applied_learning_rate", b"abc"),
        "state: rate as a vector": _set(f"{WRAPPED_STATE}/applied_learning_rate", np.ones(2)),
        "state: count as a float": _set(f"{WRAPPED_STATE}/update_count", np.float32(3.0)),
        "state: entry missing": _drop(f"{WRAPPED_STATE}/update_count"),
        "state: extra entry": _set(f"{WRAPPED_STATE}/bogus", 1.0),
        "wrapper: loss scale as a string": _set("optimizer/vars/3", b"x"),
        "wrapper: loss scale an empty dataset": _set("optimizer/vars/3", h5py.Empty("f4")),
        "wrapper: step counter as a float": _set("optimizer/vars/2", np.float32(1.0)),
        "wrapper: last entry missing": _drop_last("optimizer/vars"),
        "wrapper: an entry too many": _append("optimizer/vars"),
        "wrapper: its group deleted": _drop("optimizer/vars"),
        "wrapped: its group deleted": _drop("optimizer/inner_optimizer"),
        "wrapper: last three entries missing": _drop_last("optimizer/vars", 3),
        "wrapper: its iterations and the wrapped ones swapped": _swap("optimizer/vars", 0, 4),
        "wrapper: loss scale 0 (swapped with the rate)": _swap("optimizer/vars", 1, 3),
        "wrapper: loss scale removed, one appended": _remove_and_append("optimizer/vars", 3),
    }
    for group, (path, first) in WRAPPER_GROUPS.items():
        damages[f"{group}: iterations as a float"] = _set(f"{path}/{first}", np.float32(3.0))
        damages[f"{group}: slot of another shape"] = _set(
            f"{path}/{first + 2}", np.zeros((4, 2), "float32")
        )
        damages[f"{group}: last slot as a string"] = _set(f"{path}/{first + 3}", b"xyz")
    return damages


WRAPPER_DAMAGES = _wrapper_damages()
# Changes that give a file Keras could have written, which must restore exactly.
WRAPPER_RESTORED_CHANGES = {"as written on another backend": _as_written_on_another_backend}
# Files written by other set-ups: (writer, outcome).
WRAPPER_FOREIGN = {
    "intact": ("ours", "restored"),
    "plain SGD, mixed precision": ("plain", "restored"),
    "with a rate history": ("history", "restored"),
    "float32, no wrapper": ("float32", "raised"),
}


def mixed_precision_model(steps: int, kind: str = "ours") -> Any:
    """A compiled mixed_float16 model (its optimizer in a LossScaleOptimizer), trained ``steps``."""
    keras.config.set_dtype_policy("float32" if kind == "float32" else "mixed_float16")
    model = tiny_model()
    optimizer = {
        "plain": lambda: keras.optimizers.SGD(SCHEDULE, momentum=0.9),
        "history": lambda: keep_rate_history(IntrospectableSGD(SCHEDULE, momentum=0.9), 8),
    }.get(kind, lambda: IntrospectableSGD(SCHEDULE, momentum=0.9))()
    model.compile(optimizer, loss="mse")
    if BACKEND == "jax":  # the wrapper's eager apply() leaks a tracer on JAX: fit (stateless)
        x = np.linspace(-1, 1, 12 * steps, dtype="float32").reshape(4 * steps, 3)
        model.fit(x, x[:, :2], batch_size=4, epochs=1, verbose=0, shuffle=False)
    else:
        model.optimizer.build(model.trainable_variables)
        for _ in range(steps):
            grads = [keras.ops.convert_to_tensor(g) for g in GRADS]
            model.optimizer.apply(grads, model.trainable_variables)
    keras.config.set_dtype_policy("mixed_float16")  # conftest puts float32 back
    return model


def wrapped_snapshot(model: Any) -> dict[str, np.ndarray]:
    """The wrapper's own variables, the wrapped optimizer's, and the applied rate.

    For a plain wrapped optimizer the applied rate is the contract's ``s(n - 1)``.
    """
    wrapper = model.optimizer
    inner = getattr(wrapper, "inner_optimizer", wrapper)
    numpy = keras.ops.convert_to_numpy
    values = {f"own{i}": np.asarray(numpy(v)) for i, v in enumerate(wrapper._variables)}
    plain = getattr(inner, "_plain_variables", lambda: inner.variables)()
    values.update({f"var{i}": np.asarray(numpy(v)) for i, v in enumerate(plain)})
    if hasattr(inner, "current_learning_rate"):
        rate = inner.current_learning_rate
    else:
        rate = SCHEDULE(int(numpy(inner.iterations)) - 1)
    values["rate"] = np.asarray(numpy(rate), "float32")
    return values


@pytest.fixture(scope="module")
def wrapped_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, Any]]:
    """For each writer: its .weights.h5 and .keras files, and the model."""
    folder = tmp_path_factory.mktemp("wrapped")
    sources = {}
    for kind in ("ours", "plain", "history", "float32"):
        writer = mixed_precision_model(3, kind)
        writer.save_weights(folder / f"{kind}.weights.h5")
        writer.save(folder / f"{kind}.keras")
        sources[kind] = (folder / f"{kind}.weights.h5", folder / f"{kind}.keras", writer)
    keras.config.set_dtype_policy("float32")
    return sources


WRAPPER_CASES = [*WRAPPER_FOREIGN, *WRAPPER_RESTORED_CHANGES, *WRAPPER_DAMAGES]


@pytest.mark.parametrize("fmt", ("weights.h5", "keras", "backup"))
@pytest.mark.parametrize("case", WRAPPER_CASES)
def test_mixed_precision_load_restores_exactly_or_raises_and_changes_nothing(
    wrapped_sources: dict[str, tuple[Path, Path, Any]], tmp_path: Path, fmt: str, case: str
) -> None:
    """Through a LossScaleOptimizer: all of it (loss scale included), or an error and no change."""
    changes = {**WRAPPER_RESTORED_CHANGES, **WRAPPER_DAMAGES}
    default = ("ours", "restored" if case in WRAPPER_RESTORED_CHANGES else "raised")
    writer_kind, outcome = WRAPPER_FOREIGN.get(case, default)
    weights, keras_file, writer = wrapped_sources[writer_kind]
    path = weights
    if case in changes:
        path = tmp_path / "changed.weights.h5"
        shutil.copy(weights, path)
        with h5py.File(path, "a") as f:
            changes[case](f)
    if fmt == "keras":
        path = _as_keras_file(path, keras_file, tmp_path)
    model = mixed_precision_model(2)
    if outcome == "restored":
        load(fmt, model, path, tmp_path)
        expected = wrapped_snapshot(writer)
        assert_same(wrapped_snapshot(model), expected, expected)
        return
    before = wrapped_snapshot(model)
    with pytest.raises(ValueError) as caught:
        load(fmt, model, path, tmp_path)
    message = str(caught.value)
    assert (path.name if fmt != "backup" else "latest.weights.h5") in message, message
    assert "nothing was loaded into the optimizer" in message.lower(), message
    assert_same(wrapped_snapshot(model), before, before)


@pytest.mark.parametrize("sharded", [False, True], ids=["weights.h5", "sharded"])
def test_a_mixed_precision_file_into_a_float32_model_says_so(
    wrapped_sources: dict[str, tuple[Path, Path, Any]], tmp_path: Path, sharded: bool
) -> None:
    """The refusal names the file (sharded: its .weights.json) and the dtype policy to use."""
    weights, _, writer = wrapped_sources["ours"]
    if sharded:
        weights = tmp_path / "m.weights.json"
        # A kilobyte a shard: several shards, and room for the manifest (one entry).
        writer.save_weights(weights, max_shard_size=1e-6)
    keras.config.set_dtype_policy("float32")
    model = make_target("built", None)
    before = snapshot(model)
    with pytest.raises(ValueError) as caught:
        model.load_weights(weights)
    assert weights.name in str(caught.value)
    assert 'set_dtype_policy("mixed_float16")' in str(caught.value)
    assert_same(snapshot(model), before, [k for k in before if k.startswith(OPTIMIZER_KEYS)])


# --- tf.train.Checkpoint: what TensorFlow decides, and what we add -----------------------------


def _checkpoint(model: Any, folder: Path) -> str:
    import tensorflow as tf

    return str(tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(folder / "ck"))


@pytest.mark.tf_only
@pytest.mark.parametrize("target", ["built", "unbuilt"])
@pytest.mark.parametrize("kind", ["ours", "plain", "history", "diagnostics"])
def test_checkpoint_restores_exactly(
    sources: dict[str, Source], tmp_path: Path, target: str, kind: str
) -> None:
    """Checkpoints of ours and of plain SGD restore bit for bit, also into an unbuilt optimizer."""
    import tensorflow as tf

    source = sources[kind]
    path = _checkpoint(source.writer, tmp_path)
    model = make_target(target, sources["ours"].writer)
    status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(path)
    model.optimizer.build(model.trainable_variables)  # (unbuilt: the slots arrive now)
    if kind == "ours":
        status.assert_consumed()
    else:  # a plain checkpoint lacks our state; a feature may be left out
        status.expect_partial()
    got = snapshot(model)
    assert_same(got, source.loaded, source.loaded)
    step(model.optimizer, model)
    assert_same(snapshot(model), source.next, source.next)


@pytest.mark.tf_only
def test_checkpoint_of_another_optimizer_half_restores_as_tensorflow_does(
    sources: dict[str, Source], tmp_path: Path
) -> None:
    """An Adam checkpoint into SGD: TensorFlow raises at the first slot of another shape.

    TensorFlow matches optimizer slots by position and assigns them one by one,
    for plain SGD too: what it assigned before the mismatch stays (documented
    in docs/persistence.md, with `assert_consumed()` as the check to run first).
    """
    import tensorflow as tf

    path = _checkpoint(sources["adam"].writer, tmp_path)
    model = make_target("built", sources["ours"].writer)
    before = snapshot(model)
    with pytest.raises(ValueError, match="incompatible tensor with shape"):
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(path)
    after = snapshot(model)
    changed = sorted(k for k in before if before[k].tobytes() != after[k].tobytes())
    # The layer weights and the step counter were restored before the error.
    assert "var0" in changed and "w0" in changed


# --- save matrix: every save path writes everything, whatever state it is in -------------------

SAVE_STATES = ["built", "after checkpoint restore", "after file load", "queued"]
SAVE_PATHS = ["model.save", "save_weights", "checkpoint", "manager", "backup", "pickle"]
TF_ONLY_SAVE = {"checkpoint", "manager", "after checkpoint restore"}


def _prepared(state: str, sources: dict[str, Source], folder: Path) -> Any:
    """A compiled model whose optimizer is in ``state``, holding the 'ours' source's state."""
    if state == "built":
        return _source("ours")
    model = make_target("queued" if state == "queued" else "unbuilt", sources["ours"].writer)
    if state == "after file load":
        model.load_weights(sources["ours"].path)
        model.set_weights(sources["ours"].writer.get_weights())
    elif state == "after checkpoint restore":
        import tensorflow as tf

        path = _checkpoint(sources["ours"].writer, folder)
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(path)
    else:  # queued: the weights of the writer, the optimizer unpickled
        model.set_weights(sources["ours"].writer.get_weights())
    return model


def _save(path: str, model: Any, folder: Path) -> Path:
    """Saves ``model`` by ``path`` into ``folder``; returns what to reload."""
    if path == "model.save":
        model.save(folder / "m.keras")
        return folder / "m.keras"
    if path == "save_weights":
        model.save_weights(folder / "m.weights.h5")
        return folder / "m.weights.h5"
    if path == "pickle":
        (folder / "m.pickle").write_bytes(pickle.dumps(model))
        return folder / "m.pickle"
    if path == "backup":
        # BackupAndRestore writes at each epoch's end; a fit of one step changes the
        # state, so the reference is the state after that fit.
        x = np.ones((1, 3), "float32")
        model.fit(
            x,
            x[:, :2],
            epochs=1,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(folder, delete_checkpoint=False)],
        )
        return folder / "latest.weights.h5"
    import tensorflow as tf

    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    if path == "checkpoint":
        return Path(checkpoint.write(str(folder / "ck")))
    manager = tf.train.CheckpointManager(checkpoint, folder / "managed", max_to_keep=1)
    return Path(manager.save())


_RELOAD = r"""
import os, pickle, sys
from pathlib import Path
import numpy as np, keras
import introspect_opt
sys.path.insert(0, sys.argv[2])
from test_fault_injection import SCHEDULE, snapshot, tiny_model

out = {}
for line in Path(sys.argv[1]).read_text().splitlines():
    case, kind, where = line.split("\t")
    if kind == "model.save":
        model = keras.models.load_model(where)
    elif kind == "pickle":
        model = pickle.loads(Path(where).read_bytes())
    else:
        model = tiny_model()
        model.compile(introspect_opt.IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
        if kind in ("save_weights", "backup"):
            model.load_weights(where)
        else:
            import tensorflow as tf
            checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
            checkpoint.read(where).assert_existing_objects_matched()
    model.optimizer.build(model.trainable_variables)
    for key, value in snapshot(model).items():
        out[f"{case}|{key}"] = value
np.savez(sys.argv[3], **out)
"""


@pytest.fixture(scope="module")
def reloaded(
    sources: dict[str, Source], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Every (state, save path) written here, and read back in one fresh process."""
    root = tmp_path_factory.mktemp("saves")
    expected: dict[str, dict[str, np.ndarray]] = {}
    lines = []
    for state in SAVE_STATES:
        for path in SAVE_PATHS:
            if BACKEND != "tensorflow" and {state, path} & TF_ONLY_SAVE:
                continue
            case = f"{state}|{path}"
            folder = root / f"{len(expected)}"
            folder.mkdir()
            model = _prepared(state, sources, folder)
            where = _save(path, model, folder)
            model.optimizer.build(model.trainable_variables)
            expected[case] = snapshot(model)
            lines.append(f"{case}\t{path}\t{where}")
    listing = root / "cases.tsv"
    listing.write_text("\n".join(lines))
    result = root / "reloaded.npz"
    done = subprocess.run(
        [sys.executable, "-c", _RELOAD, str(listing), str(Path(__file__).parent), str(result)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    with np.load(result) as data:
        return expected, {key: data[key] for key in data.files}


SAVE_CASES = [
    (state, path)
    for state in SAVE_STATES
    for path in SAVE_PATHS
    if BACKEND == "tensorflow" or not {state, path} & TF_ONLY_SAVE
]


@pytest.mark.parametrize(("state", "path"), SAVE_CASES, ids=[f"{s}-{p}" for s, p in SAVE_CASES])
def test_every_save_path_writes_everything(
    reloaded: tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]], state: str, path: str
) -> None:
    """Saved in this process, reloaded in a fresh one: every variable and the rate, bit for bit."""
    expected, read_back = reloaded
    case = f"{state}|{path}"
    got = {
        key.split("|", 2)[2]: value
        for key, value in read_back.items()
        if key.startswith(f"{case}|")
    }
    assert_same(got, expected[case], expected[case])
