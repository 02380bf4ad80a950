"""Identity recorded, never inferred: the manifest every file and checkpoint carries.

Generated scenarios (docs/persistence.md, "Identity: the manifest"): a file
written by {the same class, another class whose slots have the same shapes,
the same class with other layout arguments} loaded into an optimizer that is
{built, unbuilt, holding a queued load}, in every format; what users do
(unfreezing, one optimizer in two models); and what a manifest says.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
from helpers import SCHEDULE, bits, make_data, make_model, optimizer_state, sync

import introspect_opt
from introspect_opt import IntrospectableSGD

TF = keras.backend.backend() == "tensorflow"


def _writer() -> Any:
    return IntrospectableSGD(SCHEDULE, momentum=0.9)


# (label, factory, refused): another class with one slot per variable of the
# variable's shape (Adagrad, RMSprop), or the same class with arguments that
# change the slot layout.
SCENARIOS = [
    ("same class and arguments", _writer, False),
    ("Adagrad: same slot shapes", lambda: introspect_opt.IntrospectableAdagrad(0.1), True),
    ("RMSprop: same slot shapes", lambda: introspect_opt.IntrospectableRMSprop(0.1), True),
    ("SGD without momentum", lambda: IntrospectableSGD(SCHEDULE), True),
    ("SGD with EMA", lambda: IntrospectableSGD(SCHEDULE, momentum=0.9, use_ema=True), True),
    (
        "SGD with accumulation",
        lambda: IntrospectableSGD(SCHEDULE, momentum=0.9, gradient_accumulation_steps=2),
        True,
    ),
]
TARGETS = ["built", "unbuilt", "queued"]
FORMATS = ["weights.h5", "keras", pytest.param("checkpoint", marks=pytest.mark.tf_only)]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One trained writer, saved in every format."""
    folder = tmp_path_factory.mktemp("written")
    model = make_model()
    model.compile(_writer(), loss="mse")
    x, y = make_data(32)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    sync(model)
    paths = {
        "weights.h5": folder / "m.weights.h5",
        "keras": folder / "m.keras",
    }
    model.save_weights(paths["weights.h5"])
    model.save(paths["keras"])
    if TF:
        import tensorflow as tf

        paths["checkpoint"] = tf.train.Checkpoint(optimizer=model.optimizer).write(
            str(folder / "ck")
        )
    return {"paths": paths, "model": model}


def _load(model: Any, fmt: str, path: Any) -> None:
    if fmt == "checkpoint":
        import tensorflow as tf

        tf.train.Checkpoint(optimizer=model.optimizer).read(str(path)).expect_partial()
    else:
        model.load_weights(path)


def _target(factory: Any, target: str, written: dict[str, Any]) -> Any:
    model = make_model(seed=5)
    model.compile(factory(), loss="mse")
    if target == "built":
        model.optimizer.build(model.trainable_variables)
    elif target == "queued":  # a load of the same class waiting for the build
        other = make_model(seed=6)
        other.compile(factory(), loss="mse")
        other.optimizer.apply_gradients(
            [(keras.ops.ones(v.shape), v) for v in other.trainable_variables]
        )
        other.save_weights(written["paths"]["keras"].parent / f"queued-{id(model)}.weights.h5")
        model.load_weights(written["paths"]["keras"].parent / f"queued-{id(model)}.weights.h5")
    return model


def _snapshot(optimizer: Any) -> tuple[list[np.ndarray], int, Any]:
    state = optimizer.__dict__.get("_introspection_state")
    pending = None if state is None else state.pending
    return optimizer_state(optimizer), bits(optimizer.current_learning_rate), pending


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("label", "factory", "refused"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_scenario_matrix(
    written: dict[str, Any], label: str, factory: Any, refused: bool, target: str, fmt: str
) -> None:
    """Same class restores exactly; another class or layout is refused at load, changing nothing."""
    path = written["paths"][fmt]
    model = _target(factory, target, written)
    optimizer = model.optimizer
    before = _snapshot(optimizer)
    if refused:
        with pytest.raises(ValueError) as raised:
            _load(model, fmt, path)
        message = str(raised.value)
        # The way to keep training: skip_mismatch for files; a checkpoint has none.
        checkpoint = "the tf.train.Checkpoint being restored" in message
        keep = "has no skip_mismatch" if checkpoint else "skip_mismatch=True"
        assert keep in message, message
        assert type(optimizer).__name__ in message
        assert ("SGD" in message) and ("another slot layout" in message or "written by" in message)
        if fmt != "checkpoint":
            assert str(path) in message or Path(path).name in message
        after = _snapshot(optimizer)
        assert len(after[0]) == len(before[0])
        for a, b in zip(after[0], before[0], strict=True):
            np.testing.assert_array_equal(a, b)
        assert after[1] == before[1]
        assert after[2] is before[2]  # the queue is as it was
        return
    _load(model, fmt, path)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    reference = written["model"].optimizer
    for a, b in zip(optimizer_state(optimizer), optimizer_state(reference), strict=True):
        np.testing.assert_array_equal(a, b)
    assert bits(optimizer.current_learning_rate) == bits(reference.current_learning_rate)


def test_the_manifest_records_class_layout_and_owners(written: dict[str, Any]) -> None:
    """A file says which class wrote it, its slot layout, and which variable each slot is for."""
    with h5py.File(written["paths"]["weights.h5"]) as f:
        raw = f["optimizer/_introspection_state/vars/manifest"][()]
    manifest = json.loads(bytes(raw).decode())
    assert manifest["format"] == "introspect_opt.manifest/1"
    assert manifest["class"] == "SGD"
    assert sorted({role for role, owner, _, _ in manifest["layout"] if owner is not None}) == [
        "momentum"
    ]
    model = written["model"]
    paths = [v["path"] for v in manifest["built_for"]]
    assert paths == [v.path for v in model.trainable_variables]
    roles = [(v["role"], v["owner"]) for v in manifest["variables"]]
    assert roles[:2] == [("iteration", None), ("learning_rate", None)] or roles[0] == (
        "iteration",
        None,
    )
    slots = [(role, owner) for role, owner in roles if owner is not None]
    assert slots == [("momentum", i) for i in range(len(paths))]


def test_a_plain_keras_file_has_no_manifest_and_keeps_positional_checks(tmp_path: Path) -> None:
    """A file plain SGD wrote carries no manifest: it loads by position with every shape checked."""
    model = make_model()
    model.compile(keras.optimizers.SGD(SCHEDULE, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.save_weights(tmp_path / "plain.weights.h5")
    with h5py.File(tmp_path / "plain.weights.h5") as f:
        assert "optimizer/_introspection_state" not in f
    target = make_model(seed=3)
    target.compile(introspect_opt.IntrospectableAdagrad(SCHEDULE), loss="mse")
    target.optimizer.build(target.trainable_variables)
    # Same counts and shapes: by position, nothing tells the classes apart.
    target.load_weights(tmp_path / "plain.weights.h5")


def test_unfreeze_save_before_recompiling_opens(tmp_path: Path) -> None:
    """Freeze, train, unfreeze, save: load_model opens it; the new variables start fresh, named."""
    model = make_model()
    model.layers[0].trainable = False
    model.compile(_writer(), loss="mse")
    x, y = make_data(32)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    sync(model)
    trained = {v.name: np.asarray(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables}
    model.layers[0].trainable = True
    model.save(tmp_path / "unfrozen.keras")
    with pytest.warns(UserWarning, match=r"no optimizer state for 2 variables.*dense/kernel"):
        loaded = keras.models.load_model(tmp_path / "unfrozen.keras")
    optimizer = loaded.optimizer
    assert len(optimizer.variables) > len(trained)  # built for all, the base included
    by_name = {v.name: np.asarray(keras.ops.convert_to_numpy(v)) for v in optimizer.variables}
    for name, value in trained.items():
        # load_model's model names its variables without the model's name.
        np.testing.assert_array_equal(by_name[name.removeprefix("sequential_")], value)
    fresh = [v for v in optimizer.variables if v.name.startswith("dense_kernel")]
    assert fresh and not np.asarray(keras.ops.convert_to_numpy(fresh[0])).any()
    assert bits(optimizer.current_learning_rate) == bits(model.optimizer.current_learning_rate)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)  # and it trains on


def test_one_optimizer_in_two_models_does_not_depend_on_the_callers_locals(
    tmp_path: Path,
) -> None:
    """Shared optimizer: loading into one model gives the same result whatever the caller holds."""
    writer = make_model()
    writer.compile(_writer(), loss="mse")
    x, y = make_data(16)
    writer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    writer.save_weights(tmp_path / "w.weights.h5")

    def run(keep_a_local: bool) -> list[np.ndarray]:
        shared = _writer()
        a, b = make_model(seed=1), make_model(seed=1)
        a.compile(shared, loss="mse")
        b.compile(shared, loss="mse")
        m = a if keep_a_local else None  # noqa: F841 - the local the old code read
        a.load_weights(tmp_path / "w.weights.h5")
        b.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        sync(b)
        return optimizer_state(shared)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        first, second = run(True), run(False)
    for p, q in zip(first, second, strict=True):
        np.testing.assert_array_equal(p, q)


def test_a_damaged_manifest_is_refused_naming_the_file(
    written: dict[str, Any], tmp_path: Path
) -> None:
    """A manifest that is not JSON, or lists other entries, is damage: refused, nothing changed."""
    source = written["paths"]["weights.h5"]
    damages = {
        "not json": np.frombuffer(b"{not json", np.uint8),
        "another format": np.frombuffer(json.dumps({"format": "x"}).encode(), np.uint8),
    }
    for label, value in damages.items():
        path = tmp_path / f"{label.replace(' ', '_')}.weights.h5"
        path.write_bytes(Path(source).read_bytes())
        with h5py.File(path, "r+") as f:
            del f["optimizer/_introspection_state/vars/manifest"]
            f["optimizer/_introspection_state/vars/manifest"] = value
        model = make_model(seed=5)
        model.compile(_writer(), loss="mse")
        model.optimizer.build(model.trainable_variables)
        before = optimizer_state(model.optimizer)
        with pytest.raises(ValueError, match=rf"manifest.*{path.name}|{path.name}.*manifest"):
            model.load_weights(path)
        for a, b in zip(optimizer_state(model.optimizer), before, strict=True):
            np.testing.assert_array_equal(a, b)


# --- What an adversarial review broke (each case a user's real setup) -------------------------


def _fit(model: Any, inputs: int = 6, outputs: int = 6) -> None:
    x, y = make_data(12, inputs=inputs, outputs=outputs)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    sync(model)


def _nested(seed: int = 0) -> Any:
    """Two submodels whose layers share the name "dense": paths repeat after load_model."""
    keras.utils.set_random_seed(seed)

    def sub(name: str) -> Any:
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, name="dense")], name=name)

    inputs = keras.Input((6,))
    return keras.Model(inputs, sub("b")(sub("a")(inputs)), name="outer")


@pytest.mark.parametrize("built", [True, False])
def test_repeated_variable_paths_restore_in_order(tmp_path: Path, built: bool) -> None:
    """Submodels with layers of the same name: every slot restored, as Keras built them."""
    source = keras.models.load_model(_save_nested(tmp_path), compile=False)
    assert len({v.path for v in source.trainable_variables}) == 2  # "dense/kernel" twice
    source.compile(introspect_opt.IntrospectableAdam(0.01), loss="mse")
    _fit(source)
    source.save_weights(tmp_path / "dup.weights.h5")
    target = keras.models.load_model(_save_nested(tmp_path), compile=False)
    target.compile(introspect_opt.IntrospectableAdam(0.01), loss="mse")
    if built:
        target.optimizer.build(target.trainable_variables)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        target.load_weights(tmp_path / "dup.weights.h5")
    target.optimizer.build(target.trainable_variables)
    for a, b in zip(
        optimizer_state(target.optimizer), optimizer_state(source.optimizer), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def _save_nested(tmp_path: Path) -> Path:
    path = tmp_path / "nested.keras"
    if not path.exists():
        model = _nested()
        model.compile(introspect_opt.IntrospectableAdam(0.01), loss="mse")
        model.save(path)
    return path


def _three(frozen: int) -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,))] + [keras.layers.Dense(6, name=n) for n in "abc"], name="seq"
    )
    model.layers[frozen].trainable = False
    return model


@pytest.mark.parametrize("built", [True, False])
def test_state_for_a_layer_frozen_since_is_refused_not_misplaced(
    tmp_path: Path, built: bool
) -> None:
    """Written training b and c, loaded training a and b (same shapes): refused, not shifted."""
    writer = _three(frozen=0)
    writer.compile(introspect_opt.IntrospectableAdam(0.01), loss="mse")
    _fit(writer)
    writer.save_weights(tmp_path / "shift.weights.h5")
    target = _three(frozen=2)
    target.compile(introspect_opt.IntrospectableAdam(0.01), loss="mse")
    if built:
        target.optimizer.build(target.trainable_variables)
    with pytest.raises(ValueError, match=r"seq/c/kernel.*not among.*state would be lost"):
        target.load_weights(tmp_path / "shift.weights.h5")
        target.optimizer.build(target.trainable_variables)


@pytest.mark.parametrize("name", ["Adafactor", "Adam"])
def test_unfreeze_opens_for_factored_slots_too(tmp_path: Path, name: str) -> None:
    """Adafactor's factored slots (named like their variable) follow their variable on unfreeze."""
    model = _three(frozen=0)
    model.compile(getattr(introspect_opt, f"Introspectable{name}")(0.01), loss="mse")
    _fit(model)
    trained = [v for v in model.optimizer.variables if np.asarray(v).any()]
    model.layers[0].trainable = True
    model.save(tmp_path / "unfrozen.keras")
    with pytest.warns(UserWarning, match=r"no optimizer state for 2 variables.*a/bias, a/kernel"):
        loaded = keras.models.load_model(tmp_path / "unfrozen.keras")
    # The unfrozen layer's slots start at zero; every other one is restored, in order.
    nonzero = [np.asarray(v) for v in loaded.optimizer.variables if np.asarray(v).any()]
    assert len(nonzero) == len(trained)
    for got, want in zip(nonzero, trained, strict=True):
        np.testing.assert_array_equal(got, np.asarray(want))


@pytest.mark.tf_only
@pytest.mark.parametrize("queued", [True, False])
def test_a_refused_checkpoint_changes_nothing_queue_and_cache_included(
    written: dict[str, Any], tmp_path: Path, queued: bool
) -> None:
    """An Adagrad checkpoint refused by an unbuilt SGD: no rate leaks, a queued load applies."""
    import tensorflow as tf

    other = make_model(seed=5)
    other.compile(introspect_opt.IntrospectableAdagrad(SCHEDULE), loss="mse")
    _fit(other, inputs=8, outputs=1)
    refused = tf.train.Checkpoint(optimizer=other.optimizer).write(str(tmp_path / "adagrad"))
    model = make_model(seed=5)
    model.compile(_writer(), loss="mse")
    if queued:
        model.load_weights(written["paths"]["weights.h5"])
    before = bits(model.optimizer.current_learning_rate)
    with pytest.raises(ValueError, match="written by an Adagrad optimizer"):
        tf.train.Checkpoint(optimizer=model.optimizer).read(refused)
    assert bits(model.optimizer.current_learning_rate) == before
    model.optimizer.build(model.trainable_variables)
    assert bits(model.optimizer.current_learning_rate) == before
    if queued:
        reference = written["model"].optimizer
        for a, b in zip(optimizer_state(model.optimizer), optimizer_state(reference), strict=True):
            np.testing.assert_array_equal(a, b)
    else:
        assert not any(np.asarray(v).any() for v in optimizer_state(model.optimizer)[1:])


@pytest.mark.tf_only
def test_a_checkpoint_that_fails_at_build_falls_back_to_the_queued_load(
    written: dict[str, Any], tmp_path: Path
) -> None:
    """A queued file load, then a checkpoint for another model: build refuses it, keeps the file."""
    import tensorflow as tf

    big = make_model(seed=2, hidden=4)
    big.compile(_writer(), loss="mse")
    _fit(big, inputs=8, outputs=1)
    path = tf.train.Checkpoint(optimizer=big.optimizer).write(str(tmp_path / "big"))
    model = make_model(seed=5)
    model.compile(_writer(), loss="mse")
    model.load_weights(written["paths"]["weights.h5"])
    tf.train.Checkpoint(optimizer=model.optimizer).read(path)
    with pytest.raises(ValueError, match="not among"):
        model.optimizer.build(model.trainable_variables)
    reference = written["model"].optimizer
    for a, b in zip(optimizer_state(model.optimizer), optimizer_state(reference), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_file_saved_while_queued_under_mixed_precision_loads_back(tmp_path: Path) -> None:
    """mixed_float16: load into an unbuilt optimizer, save before build: the file opens again."""
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        writer = make_model()
        writer.compile(_writer(), loss="mse")
        _fit(writer, inputs=8, outputs=1)
        writer.save_weights(tmp_path / "m.weights.h5")
        middle = make_model(seed=4)
        middle.compile(_writer(), loss="mse")
        middle.load_weights(tmp_path / "m.weights.h5")  # queued
        middle.save(tmp_path / "queued.keras")
        loaded = keras.models.load_model(tmp_path / "queued.keras")
        inner = loaded.optimizer.inner_optimizer
        for a, b in zip(
            optimizer_state(inner), optimizer_state(writer.optimizer.inner_optimizer), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    finally:
        keras.config.set_dtype_policy(policy)


@pytest.mark.parametrize("damage", ["owners swapped", "roles swapped"])
def test_a_manifest_whose_names_contradict_it_is_damage(
    written: dict[str, Any], tmp_path: Path, damage: str
) -> None:
    """Self-consistent but wrong (owners or roles exchanged): refused, not loaded astray."""
    path = tmp_path / "m.weights.h5"
    path.write_bytes(Path(written["paths"]["weights.h5"]).read_bytes())
    key = "optimizer/_introspection_state/vars/manifest"
    with h5py.File(path, "r+") as f:
        manifest = json.loads(bytes(f[key][()]).decode())
        slots = [v for v in manifest["variables"] if v["owner"] is not None]
        if damage == "owners swapped":
            slots[0]["owner"], slots[2]["owner"] = slots[2]["owner"], slots[0]["owner"]
        else:
            slots[0]["role"] = "velocity"
        del f[key]
        f[key] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    model = make_model(seed=5)
    model.compile(_writer(), loss="mse")
    with pytest.raises(ValueError, match="contradict"):
        model.load_weights(path)
