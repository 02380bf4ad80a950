"""Per-variable diagnostics in files and checkpoints: generated matrices.

The entry ``per_variable_norms`` (one float32 row of gradient, update and
weight norms per model variable the writer was built for, in the order its
manifest's ``built_for`` records) travels with the optimizer.

Round trip: formats {``.weights.h5`` and ``.keras`` by ``load_weights``,
``.keras`` by ``load_model``, ``tf.train.Checkpoint``} x writer
{per-variable, global only, off} x reader {per-variable, global only, off} x
reader {built, not built yet, trained further than the file's step}.
Oracles: what the writer read, bit for bit; and the next update of a twin of
the writer (after a load the weights and slots are the writer's, so the
reader's next update is the twin's, bit for bit). Observed:

* a reader with only global diagnostics, or none, drops the rows: files do
  not switch on what costs per update. ``load_model`` rebuilds the optimizer
  from its config, which does not record diagnostics: it drops them too;
* a file without rows reads nan in a per-variable reader, until its next
  update;
* the statistics read after a load are those of the step the file's step
  counter names, also in a reader that trained further (the load sets its
  step counter back; a train function traced before the load records the
  next step).

Identity: rows go to the variables they were recorded for, found by path,
when the reader lists them in another order or under another prefix.
``tf.train.Checkpoint`` is positional into a built optimizer (rows and slots
alike) and by path into an unbuilt one: see
``test_checkpoint_into_another_order_by_position_if_built_by_path_if_not``.

Faults (a damaged entry, another model's statistics, the entry without a
manifest): refused before anything is assigned, naming the file; every
optimizer variable, the cached rate and the rows as they were. Through
``load_weights`` and ``load_model`` the refusal arrives as Keras's own
``ValueError`` quoting the ``RefusedLoad`` message (Keras collects each
object's error and raises a new one); where no Keras loader is in between
(``build`` refusing a queued load) it is the ``RefusedLoad`` itself.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
from helpers import SCHEDULE, bits, optimizer_state, sync

from introspect_opt import IntrospectableSGD, last_update_diagnostics, record_diagnostics
from introspect_opt._common.errors import RefusedLoad

STATE = "optimizer/_introspection_state/vars"
ENTRY = f"{STATE}/per_variable_norms"
WRITERS = ("per_variable", "global", "off")
READERS = ("per_variable", "global", "off")
GLOBAL_KEYS = ("gradient_norm", "update_norm", "update_to_weight_ratio")
# `.keras` read by load_weights takes the path `.weights.h5` takes, from another
# store: its half of each matrix runs with `pytest -m extended` (.ci/run).
FORMATS = ["weights.h5", pytest.param("keras", marks=pytest.mark.extended)]
WRITER_STEPS = 3


def make_model() -> Any:
    """A functional MLP with named layers (paths ``hidden/kernel``, ...), same weights each time."""
    keras.utils.set_random_seed(0)
    x = keras.Input((3,), name="x")
    h = keras.layers.Dense(4, activation="relu", name="hidden")(x)
    return keras.Model(x, keras.layers.Dense(2, name="out")(h), name="mlp")


def optimizer_with(diagnostics: str) -> Any:
    optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
    if diagnostics != "off":
        record_diagnostics(optimizer, per_variable=diagnostics == "per_variable")
    return optimizer


def gradients(model: Any, seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [
        keras.ops.convert_to_tensor(rng.normal(size=tuple(v.shape)).astype("float32"))
        for v in model.trainable_variables
    ]


def step(model: Any, times: int = 1, seed: int = 0) -> None:
    """Eager updates with fixed gradients (the ``seed``-th, ``seed + 1``-th ...)."""
    for i in range(times):
        pairs = zip(gradients(model, seed + i), model.trainable_variables, strict=True)
        model.optimizer.apply_gradients(list(pairs))


def rows(obj: Any) -> dict[str, dict[str, float]]:
    return dict(last_update_diagnostics(obj, per_variable=True))


def exact(values: dict[str, Any]) -> dict[str, Any]:
    """A (nested) dict of floats as their ``repr``: exact (it round-trips), and nan == nan."""
    return {k: exact(v) if isinstance(v, dict) else repr(float(v)) for k, v in values.items()}


def state_entries(optimizer: Any) -> dict[str, bytes]:
    """Every variable of the optimizer's state, raw (cached rate, count, diagnostics, rows)."""
    state = optimizer.__dict__.get("_introspection_state")
    if state is None:
        return {}
    return {k: np.asarray(v).tobytes() for k, v in state.entries().items()}


def snapshot(model: Any) -> dict[str, Any]:
    """Every optimizer variable, the cached rate, the state's entries and both reads."""
    optimizer = model.optimizer
    state = optimizer.__dict__.get("_introspection_state")
    return {
        "variables": [a.tobytes() for a in optimizer_state(optimizer)],
        "rate": bits(optimizer.current_learning_rate),
        "entries": state_entries(optimizer),
        "global": exact(last_update_diagnostics(optimizer)),
        "rows": exact(rows(optimizer)),
        "pending": None if state is None else state.pending,
    }


# --- writers: one per diagnostics setting, saved in both formats ---------------------------------


class Written:
    """A writer trained ``WRITER_STEPS`` eager steps, its two files, and what it held and read."""

    def __init__(self, diagnostics: str, folder: Any) -> None:
        model = trained_writer(diagnostics)
        self.weights = folder / f"{diagnostics}.weights.h5"
        self.keras = folder / f"{diagnostics}.keras"
        model.save_weights(self.weights)
        model.save(self.keras)
        self.model = model
        self.iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        self.rate = bits(model.optimizer.current_learning_rate)
        self.variables = [a.tobytes() for a in optimizer_state(model.optimizer)]
        self.global_ = last_update_diagnostics(model)
        self.rows = rows(model)


def trained_writer(diagnostics: str) -> Any:
    model = make_model()
    model.compile(optimizer_with(diagnostics), loss="mse", jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    step(model, WRITER_STEPS)
    return model


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each writer's files; ``"next"``: per-variable and global reads of the update after them."""
    folder = tmp_path_factory.mktemp("written")
    files: dict[str, Any] = {kind: Written(kind, folder) for kind in WRITERS}
    # Diagnostics change no weight and no slot: every writer's twin makes this update.
    twin = trained_writer("per_variable")
    step(twin, seed=WRITER_STEPS)
    files["next"] = (last_update_diagnostics(twin), rows(twin))
    files["other"] = another_model(folder)
    return files


@pytest.fixture(scope="module")
def fitted_twin() -> dict[str, Any]:
    """The writer, then one step of fit: what a reader of its file must make of that step."""
    twin = fitted(trained_writer("per_variable"))
    return {
        "rows": exact(rows(twin)),
        "global": exact(last_update_diagnostics(twin)),
        "weights": [w.tobytes() for w in twin.get_weights()],
    }


# --- round trip ----------------------------------------------------------------------------------


def reader(diagnostics: str, target: str) -> Any:
    """A compiled model whose optimizer is built, not built yet, or trained beyond the writer."""
    model = make_model()
    model.compile(optimizer_with(diagnostics), loss="mse")
    if target != "unbuilt":
        model.optimizer.build(model.trainable_variables)
    if target == "trained":
        step(model, WRITER_STEPS + 2, seed=100)  # its own, fresh values; further than the file
        assert all(np.isfinite(v) for v in last_update_diagnostics(model).values())
    return model


def nan_rows(paths: Any) -> dict[str, Any]:
    keys = ("gradient_norm", "update_norm", "weight_norm", "update_to_weight_ratio")
    return exact({p: {k: np.nan for k in (*keys, "effective_learning_rate")} for p in paths})


def expected_reads(written: dict[str, Any], writer: str, diagnostics: str) -> tuple[Any, Any]:
    """(global read, per-variable read) after loading ``writer``'s file into ``diagnostics``."""
    source = written[writer]
    if diagnostics == "off":
        return {}, {}
    kept = writer != "off"
    global_ = exact(source.global_ if kept else dict.fromkeys(GLOBAL_KEYS, np.nan))
    if diagnostics == "global":
        return global_, {}
    paths = [v.path for v in source.model.trainable_variables]
    return global_, exact(source.rows) if writer == "per_variable" else nan_rows(paths)


def assert_next_update_is_fresh(model: Any, written: dict[str, Any], diagnostics: str) -> None:
    """The reader's next update is the writer twin's: its reads are that update's, bit for bit."""
    step(model, seed=WRITER_STEPS)
    global_, per_variable = written["next"]
    assert exact(last_update_diagnostics(model)) == ({} if diagnostics == "off" else exact(global_))
    assert exact(rows(model)) == (exact(per_variable) if diagnostics == "per_variable" else {})


@pytest.mark.parametrize("target", ["built", "unbuilt", "trained"])
@pytest.mark.parametrize("diagnostics", READERS, ids=[f"reader-{r}" for r in READERS])
@pytest.mark.parametrize("writer", WRITERS, ids=[f"writer-{w}" for w in WRITERS])
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(
    written: dict[str, Any], fmt: str, writer: str, diagnostics: str, target: str
) -> None:
    """Read back bit for bit where both record them; dropped, or nan, where one side does not.

    A reader without per-variable diagnostics drops the file's rows (files do
    not switch on what costs per update); a file without them reads nan in a
    per-variable reader; the next update's values are fresh. A reader that
    trained further than the file's step gets the file's step counter, and the
    statistics that belong to it.
    """
    source = written[writer]
    model = reader(diagnostics, target)
    model.load_weights(source.weights if fmt == "weights.h5" else source.keras)
    model.optimizer.build(model.trainable_variables)  # unbuilt: the queued rows apply now
    optimizer = model.optimizer
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == source.iterations
    assert [a.tobytes() for a in optimizer_state(optimizer)] == source.variables
    assert bits(optimizer.current_learning_rate) == source.rate
    global_, per_variable = expected_reads(written, writer, diagnostics)
    assert exact(last_update_diagnostics(model)) == global_
    assert exact(rows(model)) == per_variable
    entries = state_entries(optimizer)
    assert ("per_variable_norms" in entries) == (diagnostics == "per_variable")
    assert ("gradient_norm" in entries) == (diagnostics != "off")
    assert_next_update_is_fresh(model, written, diagnostics)


@pytest.mark.parametrize("writer", WRITERS, ids=[f"writer-{w}" for w in WRITERS])
def test_load_model_drops_them_until_switched_on(written: dict[str, Any], writer: str) -> None:
    """``load_model`` creates the optimizer from its config, where diagnostics are not.

    It reads as the file's step; switched on afterwards, they read nan until
    the next update, whose values are fresh.
    """
    source = written[writer]
    model = keras.saving.load_model(source.keras)
    assert [v.path for v in model.trainable_variables] == list(written["per_variable"].rows)
    assert [a.tobytes() for a in optimizer_state(model.optimizer)] == source.variables
    assert last_update_diagnostics(model) == {} and rows(model) == {}
    record_diagnostics(model, per_variable=True)
    paths = list(written["per_variable"].rows)
    assert exact(rows(model)) == nan_rows(paths)
    assert_next_update_is_fresh(model, written, "per_variable")


# --- a reader that trained with fit: the file's step, then fresh values --------------------------


def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(4, 2)).astype("float32")


def fitted(model: Any, batches: int = 1) -> Any:
    """``batches`` steps of fit on the same batch (the train function traced on TensorFlow)."""
    x, y = batch()
    x, y = np.tile(x, (batches, 1)), np.tile(y, (batches, 1))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    sync(model)
    return model


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_reader_that_trained_further_reads_the_files_step(
    written: dict[str, Any], fitted_twin: dict[str, Any], fmt: str
) -> None:
    """Loaded into a model that ran more fit steps than the file: the file's step, its values.

    The load restores the step counter (3, back from 5), and the statistics
    read are those the file recorded for that step, not the reader's own of
    step 5. The next fit step (the train function traced before the load) is
    the writer's next step: its values are fresh, bit for bit.
    """
    source = written["per_variable"]
    model = make_model()
    model.compile(optimizer_with("per_variable"), loss="mse", jit_compile=False)
    fitted(model, batches=WRITER_STEPS + 2)
    own = rows(model)
    assert all(np.isfinite(v) for row in own.values() for v in row.values())
    model.load_weights(source.weights if fmt == "weights.h5" else source.keras)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == WRITER_STEPS
    assert exact(rows(model)) == exact(source.rows) != exact(own)
    assert exact(last_update_diagnostics(model)) == exact(source.global_)
    fitted(model)
    assert exact(rows(model)) == fitted_twin["rows"]
    assert exact(last_update_diagnostics(model)) == fitted_twin["global"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_before_the_first_fit_then_fit(
    written: dict[str, Any], fitted_twin: dict[str, Any], fmt: str
) -> None:
    """Loaded into a model not trained yet (rows queued), then fit: the writer's next step."""
    source = written["per_variable"]
    model = make_model()
    model.compile(optimizer_with("per_variable"), loss="mse", jit_compile=False)
    model.load_weights(source.weights if fmt == "weights.h5" else source.keras)
    fitted(model)
    assert exact(rows(model)) == fitted_twin["rows"]
    assert [w.tobytes() for w in model.get_weights()] == fitted_twin["weights"]


def test_rows_queued_for_the_build_are_in_a_save_before_it(
    written: dict[str, Any], tmp_path: Any
) -> None:
    """Loaded into an unbuilt optimizer, saved again before its build: the rows are in the save."""
    model = reader("per_variable", "unbuilt")
    model.load_weights(written["per_variable"].weights)
    model.save_weights(tmp_path / "again.weights.h5")
    again = reader("per_variable", "built")
    again.load_weights(tmp_path / "again.weights.h5")
    assert exact(rows(again)) == exact(written["per_variable"].rows)


# --- identity: rows go to the variables they were recorded for, found by path --------------------


class Branches(keras.Model):
    """Two parallel Dense layers and a head; ``order`` decides which is tracked (and trained) first.

    Keras saves a subclassed model's layers by attribute, so the weights load
    whatever the order; ``trainable_variables`` follows it.
    """

    def __init__(self, order: str = "ab", width_b: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order, self.width_b = order, width_b
        for key in order:
            setattr(
                self, f"layer_{key}", keras.layers.Dense(4 if key == "a" else width_b, name=key)
            )
        self.head = keras.layers.Dense(2, name="head")

    def call(self, inputs: Any) -> Any:
        both = keras.ops.concatenate([self.layer_a(inputs), self.layer_b(inputs)], axis=-1)
        return self.head(both)


def branches(order: str, width_b: int) -> Any:
    keras.utils.set_random_seed(0)
    model = Branches(order, width_b, name="branches")
    model(np.zeros((1, 3), "float32"))
    return model


def sequential() -> Any:
    """``make_model``'s layers in a Sequential: paths ``sequential/hidden/kernel``, ..."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="relu", name="hidden"),
            keras.layers.Dense(2, name="out"),
        ]
    )


def per_path(model: Any) -> dict[str, tuple[bytes, bytes, Any]]:
    """Each trainable variable's weights, momentum and row, by path without the model's name."""
    optimizer = model.optimizer
    read = rows(model)
    out = {}
    for variable in model.trainable_variables:
        momentum = optimizer.momentums[optimizer._get_variable_index(variable)]  # as SGD finds it
        key = variable.path.split("/", 1)[1] if variable.path.count("/") > 1 else variable.path
        out[key] = (
            np.asarray(keras.ops.convert_to_numpy(variable)).tobytes(),
            np.asarray(keras.ops.convert_to_numpy(momentum)).tobytes(),
            exact(read[variable.path]),
        )
    return out


IDENTITY = {
    # (writer model, reader model): another order, same paths.
    "another order": (lambda: branches("ab", 5), lambda: branches("ba", 5)),
    # Same shapes everywhere: position would put rows on the wrong variables.
    "another order, same shapes": (lambda: branches("ab", 4), lambda: branches("ba", 4)),
    # sequential/hidden/kernel -> hidden/kernel, and back.
    "into a functional model (no prefix)": (sequential, make_model),
    "into a Sequential model (a prefix)": (make_model, sequential),
}


@pytest.mark.parametrize("target", ["built", "unbuilt"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", IDENTITY)
def test_rows_follow_their_variables_by_path(
    tmp_path: Any, case: str, fmt: str, target: str
) -> None:
    """Each variable gets its own row (and its own momentum), however the reader lists them."""
    make_writer, make_reader = IDENTITY[case]
    writer = make_writer()
    writer.compile(optimizer_with("per_variable"), loss="mse")
    writer.optimizer.build(writer.trainable_variables)
    step(writer, WRITER_STEPS)
    path = tmp_path / ("m.weights.h5" if fmt == "weights.h5" else "m.keras")
    if fmt == "weights.h5":
        writer.save_weights(path)
    else:
        writer.save(path)
    model = make_reader()
    model.compile(optimizer_with("per_variable"), loss="mse")
    if target == "built":
        model.optimizer.build(model.trainable_variables)
        step(model, 2, seed=100)
    model.load_weights(path)
    model.optimizer.build(model.trainable_variables)
    expected, got = per_path(writer), per_path(model)
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert got[key] == expected[key], key


# --- faults: refused, naming the file, nothing changed -------------------------------------------

ROWS = 4  # make_model's variables


def _set_entry(value: Any) -> Callable[[h5py.File, Path], None]:
    def damage(f: h5py.File, other: Path) -> None:
        del f[ENTRY]
        f[ENTRY] = value

    return damage


def _without_manifest(f: h5py.File, other: Path) -> None:
    del f[f"{STATE}/manifest"]


def another_model(folder: Path) -> Path:
    """The file of a model whose second layer has another name (same shapes), trained as the writer.

    ``hidden`` matches by path, ``other`` is not among the reader's variables
    (so position cannot be trusted either).
    """
    keras.utils.set_random_seed(0)
    x = keras.Input((3,))
    h = keras.layers.Dense(4, activation="relu", name="hidden")(x)
    model = keras.Model(x, keras.layers.Dense(2, name="other")(h))
    model.compile(optimizer_with("per_variable"), loss="mse")
    model.optimizer.build(model.trainable_variables)
    step(model, WRITER_STEPS)
    model.save_weights(folder / "other.weights.h5")
    return folder / "other.weights.h5"


def _another_models_state(f: h5py.File, other: Path) -> None:
    """Our model's weights, and another model's optimizer state and statistics."""
    del f["optimizer"]
    with h5py.File(other) as source:
        source.copy(source["optimizer"], f, "optimizer")


FAULTS: dict[str, Callable[[h5py.File, Path], None]] = {
    "a row too many": _set_entry(np.zeros((ROWS + 1, 3), "float32")),
    "a row too few": _set_entry(np.zeros((ROWS - 1, 3), "float32")),
    "four columns": _set_entry(np.zeros((ROWS, 4), "float32")),
    "integers": _set_entry(np.zeros((ROWS, 3), "int32")),
    "1-D": _set_entry(np.zeros((ROWS * 3,), "float32")),
    "without a manifest": _without_manifest,
    "another model's statistics": _another_models_state,
}
# Files that only a build can check: an unbuilt optimizer queues them, its build refuses.
CHECKED_AT_BUILD = {"another model's statistics"}


def damaged(written: dict[str, Any], fault: str, fmt: str, folder: Path) -> Path:
    """The per-variable writer's file with one fault (a .keras file: its weights member)."""
    weights = folder / "damaged.weights.h5"
    shutil.copy(written["per_variable"].weights, weights)
    with h5py.File(weights, "a") as f:
        FAULTS[fault](f, written["other"])
    if fmt == "weights.h5":
        return weights
    path = folder / "damaged.keras"
    with (
        zipfile.ZipFile(written["per_variable"].keras) as source,
        zipfile.ZipFile(path, "w") as out,
    ):
        for item in source.infolist():
            data = source.read(item.filename)
            out.writestr(
                item, weights.read_bytes() if item.filename == "model.weights.h5" else data
            )
    return path


def refusal(error: BaseException, by_keras: bool) -> str:
    """The refusal's text: Keras's ``ValueError`` quoting it (``by_keras``), else a ``RefusedLoad``.

    Keras's loader collects each object's error and raises a new plain
    ``ValueError`` quoting it ("A total of 1 objects could not be loaded"),
    without the original.
    """
    if not by_keras:
        assert isinstance(error, RefusedLoad), repr(error)
        return str(error)
    assert type(error) is ValueError, repr(error)
    assert "objects could not be loaded" in str(error), str(error)
    return str(error)


FAULT_TARGETS = ["per_variable-trained", "per_variable-unbuilt", "global-trained", "off-trained"]
# A plain run: every fault into a per-variable reader from `.weights.h5`, and
# one `.keras` cell; the rest with `pytest -m extended`.
FAULT_CELLS = [
    pytest.param(
        fmt,
        target,
        id=f"{fmt}-{target}",
        marks=()
        if (fmt, target) in {("keras", "per_variable-trained")}
        or (fmt == "weights.h5" and target.startswith("per_variable"))
        else pytest.mark.extended,
    )
    for fmt in ("weights.h5", "keras")
    for target in FAULT_TARGETS
]


@pytest.mark.parametrize(("fmt", "target"), FAULT_CELLS)
@pytest.mark.parametrize("fault", FAULTS)
def test_a_faulty_file_is_refused_and_changes_nothing(
    written: dict[str, Any], tmp_path: Path, fault: str, fmt: str, target: str
) -> None:
    """Refused before anything is assigned: every variable, the cached rate, the rows kept.

    Also where the reader keeps no per-variable rows (it would drop them): a
    file whose rows do not fit its manifest is damaged, whoever reads it.
    """
    path = damaged(written, fault, fmt, tmp_path)
    diagnostics, kind = target.split("-")
    model = reader(diagnostics, kind)
    if diagnostics == "per_variable" and kind == "trained":  # values of its own to keep
        assert all(np.isfinite(v) for row in rows(model).values() for v in row.values())
    before = snapshot(model)
    with pytest.raises(ValueError) as raised:
        model.load_weights(path)
        if kind == "unbuilt" and fault in CHECKED_AT_BUILD:
            model.optimizer.build(model.trainable_variables)  # queued: checked here
    message = refusal(raised.value, by_keras=kind != "unbuilt" or fault not in CHECKED_AT_BUILD)
    assert "Cannot restore" in message and path.name in message, message
    assert "nothing was loaded into the optimizer" in message.lower(), message
    if kind == "unbuilt":  # the refused state never applies later: built as if never loaded
        model.optimizer.build(model.trainable_variables)
        twin = reader(diagnostics, kind)
        twin.optimizer.build(twin.trainable_variables)
        before = snapshot(twin)
    after = snapshot(model)
    assert after.pop("pending") is before.pop("pending")
    assert after == before


@pytest.mark.parametrize("fault", FAULTS)
def test_load_model_of_a_faulty_file_is_refused(
    written: dict[str, Any], tmp_path: Path, fault: str
) -> None:
    """``load_model`` refuses it too, naming the file (or, from memory, "the .keras file")."""
    path = damaged(written, fault, "keras", tmp_path)
    with pytest.raises(ValueError) as raised:
        keras.saving.load_model(path)
    message = refusal(raised.value, by_keras=True)
    assert "Cannot restore" in message, message
    assert str(path) in message or "the .keras file being loaded" in message, message


# --- tf.train.Checkpoint -------------------------------------------------------------------------


def write_checkpoint(model: Any, folder: Path, name: str) -> str:
    import tensorflow as tf

    return str(
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(folder / name))
    )


def read_checkpoint(model: Any, path: str) -> Any:
    import tensorflow as tf

    return tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(path)


@pytest.fixture(scope="module")
def checkpoints(
    written: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {kind: write_checkpoint(written[kind].model, folder, kind) for kind in WRITERS}


@pytest.mark.tf_only
@pytest.mark.parametrize("target", ["built", "unbuilt", "trained"])
@pytest.mark.parametrize("diagnostics", READERS, ids=[f"reader-{r}" for r in READERS])
@pytest.mark.parametrize("writer", WRITERS, ids=[f"writer-{w}" for w in WRITERS])
def test_checkpoint_round_trip(
    written: dict[str, Any], checkpoints: dict[str, str], writer: str, diagnostics: str, target: str
) -> None:
    """As files: the writer's values bit for bit, nan where the checkpoint has none, then fresh.

    A checkpoint without rows (or without diagnostics) restores the step
    counter: a reader that trained further must not show its own values of a
    later step as the restored step's.
    """
    source = written[writer]
    model = reader(diagnostics, target)
    read_checkpoint(model, checkpoints[writer])
    model.optimizer.build(model.trainable_variables)  # unbuilt: the queued rows apply now
    optimizer = model.optimizer
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == source.iterations
    assert [a.tobytes() for a in optimizer_state(optimizer)] == source.variables
    assert bits(optimizer.current_learning_rate) == source.rate
    global_, per_variable = expected_reads(written, writer, diagnostics)
    assert exact(last_update_diagnostics(model)) == global_
    assert exact(rows(model)) == per_variable
    assert_next_update_is_fresh(model, written, diagnostics)


@pytest.mark.tf_only
def test_checkpoint_into_an_unbuilt_reader_then_fit(
    checkpoints: dict[str, str], fitted_twin: dict[str, Any]
) -> None:
    """Restored before the first fit (rows queued for the build in it): the writer's next step."""
    model = make_model()
    model.compile(optimizer_with("per_variable"), loss="mse", jit_compile=False)
    read_checkpoint(model, checkpoints["per_variable"]).assert_consumed()
    fitted(model)
    assert exact(rows(model)) == fitted_twin["rows"]
    assert exact(last_update_diagnostics(model)) == fitted_twin["global"]
    assert [w.tobytes() for w in model.get_weights()] == fitted_twin["weights"]


@pytest.mark.tf_only
@pytest.mark.parametrize("target", ["built", "unbuilt"])
def test_checkpoint_into_another_order_by_position_if_built_by_path_if_not(
    tmp_path: Path, target: str
) -> None:
    """Another variable order: a built reader takes rows by position, an unbuilt one by path.

    Observed (TensorFlow matches ``_variables/N`` and every state variable by
    position; the manifest restored first checks class and layout only): into
    a built optimizer, the slots and the rows land by position, so each row
    stays with the momentum it was recorded with, but on another variable
    when the reader lists its variables in another order (shapes equal;
    other shapes make TensorFlow raise half-way, as for plain Keras, see
    docs/persistence.md). Into an unbuilt optimizer, the checkpoint's slots
    and rows wait for the build, which matches them by the manifest: by path.
    The model's own weights restore by attribute either way.
    """
    writer = branches("ab", 4)
    writer.compile(optimizer_with("per_variable"), loss="mse")
    writer.optimizer.build(writer.trainable_variables)
    step(writer, WRITER_STEPS)
    path = write_checkpoint(writer, tmp_path, "ck")
    model = branches("ba", 4)
    model.compile(optimizer_with("per_variable"), loss="mse")
    if target == "built":
        model.optimizer.build(model.trainable_variables)
    read_checkpoint(model, path)
    model.optimizer.build(model.trainable_variables)
    expected, got = per_path(writer), per_path(model)
    order = [v.path for v in writer.trainable_variables]
    assert [v.path for v in model.trainable_variables][:4] == [*order[2:4], *order[:2]]
    for key in expected:
        weights, momentum, row = got[key]
        assert weights == expected[key][0], key  # by attribute
        if target == "unbuilt" or key.startswith("head/"):
            assert (momentum, row) == expected[key][1:], key
    if target == "built":
        for i, key in enumerate(expected):  # position i of the writer -> position i here
            here = model.trainable_variables[i].path.split("/", 1)[1]
            assert got[here][1:] == expected[key][1:], (key, here)
