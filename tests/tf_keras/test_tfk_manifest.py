"""Identity recorded, never inferred: the manifest of tf_keras optimizer state.

Generated scenarios (docs/keras2.md, "The manifest"): state written by {the
same class, another class whose slots have the same shapes, the same class
with arguments that change the slot layout} loaded into an optimizer that is
{built, not built}, in every format that holds optimizer state of the family
(new: ``.weights.h5``, ``.keras``, ``tf.train.Checkpoint``, TF-format
``save_weights``; legacy: the last two, tf_keras writes no legacy optimizer
state in ``.keras`` files); what a manifest says; and the formats without one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tfk_helpers import SCHEDULE, bits, make_model, plain_variables

from introspect_opt import tf_keras as itk
from introspect_opt._common.errors import RefusedLoad

MANIFEST_KEY = "optimizer/_introspection_state/_manifest/.ATTRIBUTES/py_state"

# Writers: trained two steps, saved in every format of their family.
WRITERS = {
    "new SGD": (lambda: itk.IntrospectableSGD(SCHEDULE, momentum=0.9), "new"),
    "new Adam": (lambda: itk.IntrospectableAdam(SCHEDULE), "new"),
    "legacy SGD": (lambda: itk.IntrospectableLegacySGD(SCHEDULE, momentum=0.9), "legacy"),
    "legacy Adam": (lambda: itk.IntrospectableLegacyAdam(SCHEDULE), "legacy"),
}
FORMATS = {
    "new": ["weights.h5", "keras", "checkpoint", "tf_weights"],
    "legacy": ["checkpoint", "tf_weights"],
}

# (label, writer, target factory, refused). Another class with one slot per
# variable of the variable's shape (Adagrad, RMSprop), or the same class with
# arguments that change the slot layout. tf_keras's new SGD creates its `m`
# slots whatever `momentum` is: there, momentum does not change the layout.
SCENARIOS = [
    ("new: same class and arguments", "new SGD", WRITERS["new SGD"][0], False),
    ("new: Adagrad, same slot shapes", "new SGD", lambda: itk.IntrospectableAdagrad(0.1), True),
    ("new: RMSprop, same slot shapes", "new SGD", lambda: itk.IntrospectableRMSprop(0.1), True),
    (
        "new: SGD with EMA",
        "new SGD",
        lambda: itk.IntrospectableSGD(SCHEDULE, momentum=0.9, use_ema=True),
        True,
    ),
    (
        "new: SGD without momentum, same layout",
        "new SGD",
        lambda: itk.IntrospectableSGD(SCHEDULE),
        False,
    ),
    (
        "new: Adam with amsgrad",
        "new Adam",
        lambda: itk.IntrospectableAdam(SCHEDULE, amsgrad=True),
        True,
    ),
    ("legacy: same class and arguments", "legacy SGD", WRITERS["legacy SGD"][0], False),
    (
        "legacy: Adagrad, same slot shapes",
        "legacy SGD",
        lambda: itk.IntrospectableLegacyAdagrad(0.1),
        True,
    ),
    (
        "legacy: RMSprop, same slot shapes",
        "legacy SGD",
        lambda: itk.IntrospectableLegacyRMSprop(0.1),
        True,
    ),
    (
        "legacy: SGD without momentum",
        "legacy SGD",
        lambda: itk.IntrospectableLegacySGD(SCHEDULE),
        True,
    ),
    (
        "legacy: Adam with amsgrad",
        "legacy Adam",
        lambda: itk.IntrospectableLegacyAdam(SCHEDULE, amsgrad=True),
        True,
    ),
]
CASES = [
    pytest.param(label, writer, factory, refused, target, fmt, id=f"{label}-{target}-{fmt}")
    for label, writer, factory, refused in SCENARIOS
    for target in ("built", "unbuilt")
    for fmt in FORMATS[WRITERS[writer][1]]
]


def _step(model: Any) -> None:
    variables = model.trainable_variables
    model.optimizer.apply_gradients(
        zip([tf.fill(v.shape, 0.5) for v in variables], variables, strict=True)
    )


def _build(model: Any) -> None:
    """Creates the optimizer's slots (new family: `build`; legacy: what its first update does)."""
    optimizer = model.optimizer
    if isinstance(optimizer, tf_keras.optimizers.Optimizer):
        optimizer.build(model.trainable_variables)
    else:
        optimizer._create_all_weights(model.trainable_variables)


def _save(model: Any, fmt: str, folder: Path) -> Any:
    if fmt == "weights.h5":
        path = folder / "m.weights.h5"
        model.save_weights(path)
    elif fmt == "keras":
        path = folder / "m.keras"
        model.save(path)
    elif fmt == "checkpoint":
        path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
            str(folder / "checkpoint" / "ck")
        )
    else:
        path = folder / "tf_weights" / "ck"
        model.save_weights(str(path))
    return path


def _load(model: Any, fmt: str, path: Any) -> None:
    if fmt == "checkpoint":
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(str(path)).expect_partial()
    elif fmt == "tf_weights":
        model.load_weights(str(path)).expect_partial()
    else:
        model.load_weights(path)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each writer after two updates, saved in every format of its family."""
    # A module fixture runs before the per-test reset (conftest): a policy an
    # earlier test on this xdist worker left behind must not reach the writers.
    tf_keras.mixed_precision.set_global_policy("float32")
    tf_keras.backend.clear_session()
    out = {}
    for key, (factory, family) in WRITERS.items():
        folder = tmp_path_factory.mktemp(key.replace(" ", "_"))
        model = make_model()
        model.compile(factory(), loss="mse")
        _step(model)
        _step(model)
        paths = {fmt: _save(model, fmt, folder) for fmt in FORMATS[family]}
        out[key] = {"paths": paths, "model": model}
    return out


def _optimizer_values(model: Any) -> list[np.ndarray]:
    """The optimizer's variables in a fixed order: the step counter, then each weight's slots.

    (A legacy optimizer lists its variables in creation order, which a
    checkpoint restore changes.)
    """
    optimizer = model.optimizer
    if isinstance(optimizer, tf_keras.optimizers.Optimizer):
        variables = plain_variables(optimizer)
    else:
        variables = [optimizer.iterations] + [
            optimizer.get_slot(v, name)
            for name in optimizer.get_slot_names()
            for v in model.trainable_variables
        ]
    return [np.array(tf.identity(v).numpy()) for v in variables]


def _snapshot(model: Any) -> dict[str, Any]:
    optimizer = model.optimizer
    rate = bits(optimizer.current_learning_rate)  # also creates a legacy optimizer's counter
    return {
        "variables": {v.name: np.array(tf.identity(v).numpy()) for v in plain_variables(optimizer)},
        "cache": {k: v.item() for k, v in optimizer._introspection_state.values().items()},
        "rate": rate,
        "weights": [np.array(w) for w in model.get_weights()],
    }


def _assert_same(after: dict[str, Any], before: dict[str, Any], model_too: bool) -> None:
    assert after["variables"].keys() == before["variables"].keys()
    for name, value in before["variables"].items():
        np.testing.assert_array_equal(after["variables"][name], value, err_msg=name)
    assert after["cache"] == before["cache"]
    assert after["rate"] == before["rate"]
    if model_too:
        for a, b in zip(after["weights"], before["weights"], strict=True):
            np.testing.assert_array_equal(a, b)


def _target(factory: Any, target: str) -> Any:
    model = make_model(seed=5)
    model.compile(factory(), loss="mse")
    if target == "built":
        _step(model)  # trained: every variable differs from the file's
    return model


@pytest.mark.parametrize(("label", "writer", "factory", "refused", "target", "fmt"), CASES)
def test_scenario_matrix(
    written: dict[str, Any],
    label: str,
    writer: str,
    factory: Any,
    refused: bool,
    target: str,
    fmt: str,
) -> None:
    """Same identity restores; another class or layout is refused at the load, changing nothing."""
    path = written[writer]["paths"][fmt]
    model = _target(factory, target)
    optimizer = model.optimizer
    before = _snapshot(model)
    file_format = fmt in ("weights.h5", "keras")
    if not refused and file_format and target == "unbuilt":
        # tf_keras files are loaded by position: a new optimizer must be built first.
        with pytest.raises(RuntimeError, match=r"not built\).*optimizer\.build"):
            _load(model, fmt, path)
        _assert_same(_snapshot(model), before, model_too=False)
        return
    if refused:
        # docs/persistence.md: both worlds refuse with a ValueError (RefusedLoad).
        with pytest.raises(ValueError) as raised:
            _load(model, fmt, path)
        assert type(raised.value) is RefusedLoad, type(raised.value)
        message = str(raised.value)
        # The way to keep training: skip_mismatch for files; a checkpoint has none.
        checkpoint = "the tf.train.Checkpoint being restored" in message
        keep = "has no skip_mismatch" if checkpoint else "skip_mismatch=True"
        assert keep in message, message
        assert type(optimizer).__name__ in message
        written_by = type(written[writer]["model"].optimizer)._introspect_base.__name__
        from introspect_opt._common.manifest import _a

        assert f"written by {_a(('legacy.' if 'legacy' in writer else '') + written_by)}" in message
        assert "another slot layout" in message or "this one is a" in message
        if fmt == "weights.h5":
            assert Path(path).name in message
        elif fmt == "keras":
            assert ".keras" in message and "model.weights.h5" in message
        # A checkpoint restores nothing (the model neither): the manifest comes first.
        _assert_same(_snapshot(model), before, model_too=not file_format)
        if target == "unbuilt":
            # Nothing of the refused state waits for the build either.
            _build(model)
            twin = _target(factory, "unbuilt")
            _build(twin)
            for a, b in zip(_optimizer_values(model), _optimizer_values(twin), strict=True):
                np.testing.assert_array_equal(a, b)
        return
    _load(model, fmt, path)
    _build(model)
    reference = written[writer]["model"]
    for a, b in zip(_optimizer_values(model), _optimizer_values(reference), strict=True):
        np.testing.assert_array_equal(a, b)
    assert bits(optimizer.current_learning_rate) == bits(reference.optimizer.current_learning_rate)


# --- what a manifest says -------------------------------------------------------


def test_a_keras_file_records_class_layout_and_owners(written: dict[str, Any]) -> None:
    """A .weights.h5 file names the class that wrote it, its layout, and each slot's variable."""
    with h5py.File(written["new SGD"]["paths"]["weights.h5"]) as f:
        raw = f["optimizer/_introspection_state/vars/manifest"][()]
    manifest = json.loads(bytes(raw).decode())
    assert manifest["format"] == "introspect_opt.manifest/1"
    assert manifest["class"] == "SGD"
    assert sorted({role for role, owner, _, _ in manifest["layout"] if owner is not None}) == ["m"]
    model = written["new SGD"]["model"]
    paths = [v["path"] for v in manifest["built_for"]]
    assert paths == [v.name.split(":")[0] for v in model.trainable_variables]
    roles = [(v["role"], v["owner"]) for v in manifest["variables"]]
    assert roles == [("iteration", None)] + [("m", i) for i in range(len(paths))]


def test_a_legacy_checkpoint_records_owners_from_the_slots(written: dict[str, Any]) -> None:
    """A legacy optimizer's checkpoint records class `legacy.Adam` and each slot's variable."""
    path = written["legacy Adam"]["paths"]["checkpoint"]
    manifest = json.loads(tf.train.load_checkpoint(path).get_tensor(MANIFEST_KEY))
    assert manifest["class"] == "legacy.Adam"
    model = written["legacy Adam"]["model"]
    optimizer = model.optimizer
    count = len(model.trainable_variables)
    assert len(manifest["built_for"]) == count
    by_name = {v["name"]: (v["role"], v["owner"]) for v in manifest["variables"]}
    for index, variable in enumerate(model.trainable_variables):
        for role in ("m", "v"):
            name = optimizer.get_slot(variable, role).name.split(":")[0]
            assert by_name[name] == (role, index)
    assert [r for r, o in by_name.values() if o is None] == ["iter"]


def test_a_damaged_manifest_is_refused_naming_the_file(
    written: dict[str, Any], tmp_path: Path
) -> None:
    """A manifest not JSON, of another format, or contradicting its names: refused, no change."""
    source = written["new SGD"]["paths"]["weights.h5"]
    with h5py.File(source) as f:
        recorded = json.loads(bytes(f["optimizer/_introspection_state/vars/manifest"][()]))
    recorded["variables"][1]["owner"] = 2  # the first layer's kernel slot, said to be another's
    damages = {
        "not_json": np.frombuffer(b"{not json", np.uint8),
        "another_format": np.frombuffer(json.dumps({"format": "x"}).encode(), np.uint8),
        "contradicting_owner": np.frombuffer(json.dumps(recorded).encode(), np.uint8),
    }
    for label, value in damages.items():
        path = tmp_path / f"{label}.weights.h5"
        path.write_bytes(Path(source).read_bytes())
        with h5py.File(path, "r+") as f:
            del f["optimizer/_introspection_state/vars/manifest"]
            f["optimizer/_introspection_state/vars/manifest"] = value
        model = _target(WRITERS["new SGD"][0], "built")
        before = _snapshot(model)
        with pytest.raises(RuntimeError, match=rf"manifest.*{path.name}|{path.name}.*manifest"):
            model.load_weights(path)
        _assert_same(_snapshot(model), before, model_too=False)


def test_a_file_whose_entries_differ_from_its_manifest_is_damaged(
    written: dict[str, Any], tmp_path: Path
) -> None:
    """An optimizer entry of another shape than its manifest records is refused as damage."""
    path = tmp_path / "reshaped.weights.h5"
    path.write_bytes(Path(written["new SGD"]["paths"]["weights.h5"]).read_bytes())
    with h5py.File(path, "r+") as f:
        del f["optimizer/vars/1"]
        f["optimizer/vars/1"] = np.zeros((8, 4), "float32")
    model = _target(WRITERS["new SGD"][0], "built")
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match=r"manifest lists .* the file is damaged"):
        model.load_weights(path)
    _assert_same(_snapshot(model), before, model_too=False)


# --- files without a manifest: today's checks -----------------------------------


def test_a_plain_file_has_no_manifest_and_keeps_positional_checks(tmp_path: Path) -> None:
    """Plain SGD's files carry no manifest: they load by position, counts and shapes checked."""
    model = make_model()
    model.compile(tf_keras.optimizers.SGD(SCHEDULE, momentum=0.9), loss="mse")
    _step(model)
    model.save_weights(tmp_path / "plain.weights.h5")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    path = checkpoint.write(str(tmp_path / "ck" / "ck"))
    with h5py.File(tmp_path / "plain.weights.h5") as f:
        assert "optimizer/_introspection_state" not in f
    assert MANIFEST_KEY not in dict(tf.train.list_variables(path))
    for fmt, source in (("weights.h5", tmp_path / "plain.weights.h5"), ("checkpoint", path)):
        target = _target(lambda: itk.IntrospectableAdagrad(0.1), "built")
        # Same counts and shapes: by position, nothing tells the classes apart.
        _load(target, fmt, source)
        assert int(target.optimizer.iterations.numpy()) == 1


def test_savedmodel_and_hdf5_model_files_have_no_place_for_a_manifest(
    written: dict[str, Any], tmp_path: Path
) -> None:
    """A SavedModel's variables and an HDF5 model file hold no manifest (positional checks)."""
    model = written["new SGD"]["model"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save(tmp_path / "savedmodel")
        model.save(tmp_path / "m.h5")
    assert not [w for w in caught if "python values" in str(w.message)]
    names = dict(tf.train.list_variables(str(tmp_path / "savedmodel" / "variables" / "variables")))
    assert "optimizer/_introspection_state/update_count/.ATTRIBUTES/VARIABLE_VALUE" in names
    assert MANIFEST_KEY not in names
    with h5py.File(tmp_path / "m.h5") as f:
        found: list[str] = []
        f.visit(lambda name: found.append(name) if "manifest" in name else None)
    assert found == []
