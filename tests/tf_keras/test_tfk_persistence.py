"""tf_keras save formats: nothing lost, interchangeable with the plain classes, all or nothing."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tfk_helpers import (
    FLOAT_ONLY,
    SCHEDULE,
    array_bits,
    bits,
    exported_optimizers,
    make_data,
    make_model,
    plain_variables,
    rate_for,
    update_count,
)

from introspect_opt import tf_keras as itk

FAMILIES = {
    "new": (itk.IntrospectableSGD, tf_keras.optimizers.SGD),
    "legacy": (itk.IntrospectableLegacySGD, tf_keras.optimizers.legacy.SGD),
}
UPDATES = 4  # one epoch: 32 samples, batches of 8


def compiled(cls: Any, seed: int = 0) -> Any:
    model = make_model(seed)
    model.compile(cls(SCHEDULE, momentum=0.9), loss="mse")
    return model


def build(model: Any) -> Any:
    """Creates the optimizer's slots for the model (the public way for each family)."""
    optimizer = model.optimizer
    if isinstance(optimizer, tf_keras.optimizers.Optimizer):
        optimizer.build(model.trainable_variables)
    else:
        optimizer._create_all_weights(model.trainable_variables)
    return optimizer


def values(model: Any) -> list[np.ndarray]:
    """The optimizer's state in a fixed order: iterations, then each weight's slots.

    (A legacy optimizer lists its variables in creation order, which a
    checkpoint restore changes: slots restored at once come before `iter`.)
    """
    optimizer = model.optimizer
    if isinstance(optimizer, tf_keras.optimizers.Optimizer):
        variables = plain_variables(optimizer)
    else:
        slots = optimizer.get_slot_names()
        variables = [optimizer.iterations] + [
            optimizer.get_slot(v, name) for v in model.trainable_variables for name in slots
        ]
    return [tf.identity(v).numpy() for v in variables]


def cache(optimizer: Any) -> tuple[int, int]:
    """The cached rate's bits and the update it belongs to."""
    state = optimizer._introspection_state.values()
    return bits(state["applied_learning_rate"]), int(state["update_count"])


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, Any]]:
    """Per family, ours and plain after one epoch, saved in every format; what they held."""
    root = tmp_path_factory.mktemp("saved")
    x, y = make_data()
    out = {}
    for family, classes in FAMILIES.items():
        for label, cls in zip(("ours", "plain"), classes, strict=True):
            model = compiled(cls)
            model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
            stem = root / f"{family}-{label}"
            paths = {
                "h5": stem.with_suffix(".h5"),
                "keras": stem.with_suffix(".keras"),
                "weights_h5": stem.with_suffix(".weights.h5"),
                "tf_weights": stem / "weights" / "ckpt",
            }
            model.save(paths["h5"])
            model.save(paths["keras"])
            model.save_weights(paths["weights_h5"])
            model.save_weights(str(paths["tf_weights"]))
            checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
            paths["checkpoint"] = Path(checkpoint.write(str(stem / "checkpoint" / "ck")))
            if label == "ours":
                paths["savedmodel"] = stem / "savedmodel"
                model.save(str(paths["savedmodel"]))
            out[(family, label)] = {
                "paths": paths,
                "optimizer": values(model),
                "weights": model.get_weights(),
                "cache": cache(model.optimizer) if label == "ours" else None,
            }
    return out


def expect_state(model: Any, entry: dict[str, Any]) -> None:
    assert int(model.optimizer.iterations.numpy()) == UPDATES
    assert array_bits(values(model)) == array_bits(entry["optimizer"])


# --- tf.train.Checkpoint ---------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip_into_an_unbuilt_optimizer(family: str, saved: Any) -> None:
    """A checkpoint restores slots and cache into a fresh optimizer; training continues exactly."""
    entry = saved[(family, "ours")]
    model = compiled(FAMILIES[family][0], seed=5)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
        str(entry["paths"]["checkpoint"])
    ).assert_existing_objects_matched()
    assert cache(model.optimizer) == entry["cache"] == (bits(SCHEDULE(UPDATES - 1)), UPDATES)
    assert bits(model.optimizer.current_learning_rate) == entry["cache"][0]
    build(model)  # the slots waited for their variables
    expect_state(model, entry)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_from_the_plain_class_restores_and_derives_the_rate(
    family: str, saved: Any
) -> None:
    """Plain -> ours: slots restored and the rate derived, also over an optimizer with a cache."""
    entry = saved[(family, "plain")]
    restored = compiled(FAMILIES[family][0], seed=5)
    status = tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).read(
        str(entry["paths"]["checkpoint"])
    )
    status.assert_nontrivial_match()
    # The plain checkpoint has no cache: TensorFlow's strictest check names it.
    with pytest.raises(AssertionError, match="applied_learning_rate"):
        status.assert_existing_objects_matched()
    build(restored)
    expect_state(restored, entry)
    assert bits(restored.optimizer.current_learning_rate) == bits(SCHEDULE(UPDATES - 1))
    # A float-rate optimizer that applied 0.1 four times, then was set to 0.2:
    # its cache (0.1, update 4) must not pass for the restored counter's rate.
    x, y = make_data()
    model = make_model(seed=5)
    model.compile(FAMILIES[family][0](0.1, momentum=0.9), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.optimizer.learning_rate = 0.2
    assert cache(model.optimizer) == (bits(0.1), UPDATES)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
        str(entry["paths"]["checkpoint"])
    ).expect_partial()
    assert update_count(model.optimizer) == -1
    assert bits(model.optimizer.current_learning_rate) == bits(0.2)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_of_ours_restores_into_the_plain_class(family: str, saved: Any) -> None:
    """Ours -> plain: every variable of the plain optimizer restored; the cache is ignored."""
    entry = saved[(family, "ours")]
    model = compiled(FAMILIES[family][1], seed=5)
    status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
        str(entry["paths"]["checkpoint"])
    )
    status.assert_existing_objects_matched()
    build(model)
    expect_state(model, entry)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_cache_wins_over_the_step_counter_it_restores(family: str, saved: Any) -> None:
    """Our checkpoint restored over a trained optimizer brings its cache, not a derived rate."""
    entry = saved[(family, "ours")]
    model = compiled(FAMILIES[family][0], seed=5)
    model.optimizer.apply_gradients(
        zip(
            [tf.ones_like(v) for v in model.trainable_variables],
            model.trainable_variables,
            strict=True,
        )
    )
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
        str(entry["paths"]["checkpoint"])
    ).assert_existing_objects_matched()
    assert cache(model.optimizer) == entry["cache"]


@pytest.mark.parametrize("family", FAMILIES)
def test_tf_format_save_weights_round_trip(family: str, saved: Any) -> None:
    """`save_weights` in TensorFlow format carries the slots and the cache."""
    entry = saved[(family, "ours")]
    model = compiled(FAMILIES[family][0], seed=5)
    model.load_weights(str(entry["paths"]["tf_weights"]))
    assert cache(model.optimizer) == entry["cache"]
    build(model)
    expect_state(model, entry)
    assert array_bits(model.get_weights()) == array_bits(entry["weights"])


# --- HDF5 model files --------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_h5_model_round_trip_derives_the_rate(family: str, saved: Any) -> None:
    """`load_model("m.h5")` needs no custom_objects; HDF5 holds no cache, so the rate is derived."""
    entry = saved[(family, "ours")]
    model = tf_keras.models.load_model(entry["paths"]["h5"])
    assert type(model.optimizer) is FAMILIES[family][0]
    expect_state(model, entry)
    assert update_count(model.optimizer) == -1
    assert bits(model.optimizer.current_learning_rate) == bits(SCHEDULE(UPDATES - 1))
    assert float(model.optimizer.current_learning_rate) == pytest.approx(
        np.asarray(entry["cache"][0], np.int32).view(np.float32), rel=1e-6
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_h5_model_files_interchange_both_ways(
    family: str, saved: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HDF5 file of ours loads as the plain class; a plain one becomes ours with introspect()."""
    ours_cls, plain_cls = FAMILIES[family]
    name = f"introspect_opt>{ours_cls.__name__}"
    # Where introspect_opt is not imported, custom_objects names the plain class.
    # (tf_keras prefers registered classes to custom_objects.)
    monkeypatch.delitem(tf_keras.saving.get_custom_objects(), name)
    model = tf_keras.models.load_model(
        saved[(family, "ours")]["paths"]["h5"], custom_objects={name: plain_cls}
    )
    monkeypatch.undo()
    assert type(model.optimizer) is plain_cls
    expect_state(model, saved[(family, "ours")])
    model = tf_keras.models.load_model(saved[(family, "plain")]["paths"]["h5"])
    optimizer = itk.introspect(model.optimizer)
    expect_state(model, saved[(family, "plain")])
    assert bits(optimizer.current_learning_rate) == bits(SCHEDULE(UPDATES - 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_h5_model_with_damaged_optimizer_weights_raises_where_plain_resets(
    family: str, saved: Any, tmp_path: Path
) -> None:
    """A missing optimizer entry: plain tf_keras loads half or nothing silently; ours raises."""
    for label in ("ours", "plain"):
        damaged = tmp_path / f"{label}.h5"
        shutil.copy(saved[(family, label)]["paths"]["h5"], damaged)
        with h5py.File(damaged, "r+") as f:
            group = f["optimizer_weights"]
            names = list(group.attrs["weight_names"])
            group.attrs["weight_names"] = names[:-1]
        if label == "plain":
            model = tf_keras.models.load_model(damaged)
            # No error. New: zip() assigns the first two entries (half-loaded);
            # legacy: the ValueError is logged and the optimizer starts afresh.
            restored = [int(model.optimizer.iterations.numpy()), values(model)[-1]]
            if family == "new":
                assert restored[0] == UPDATES and not restored[1].any()
            else:
                assert restored[0] == 0
            continue
        with pytest.raises(
            RuntimeError, match=r"holds 4 optimizer variables, this optimizer has 5"
        ):
            tf_keras.models.load_model(damaged)


# --- .keras and .weights.h5 ---------------------------------------------------


def test_keras_file_round_trip_keeps_class_config_and_cache(saved: Any) -> None:
    """`load_model("m.keras")`: our class, same config, the cached rate bit for bit."""
    entry = saved[("new", "ours")]
    model = tf_keras.models.load_model(entry["paths"]["keras"])
    assert type(model.optimizer) is itk.IntrospectableSGD
    assert model.optimizer.get_config()["momentum"] == 0.9
    expect_state(model, entry)
    assert cache(model.optimizer) == entry["cache"]
    with (
        zipfile.ZipFile(entry["paths"]["keras"]) as archive,
        archive.open("model.weights.h5") as f,
        h5py.File(f) as weights,
    ):
        assert sorted(weights["optimizer/vars"]) == ["0", "1", "2", "3", "4"]
        assert sorted(weights["optimizer/_introspection_state/vars"]) == [
            "applied_learning_rate",
            "manifest",
            "update_count",
        ]


def test_keras_files_interchange_both_ways(saved: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .keras file of ours loads as plain SGD; a plain one switches to ours by load_weights."""
    ours, plain = saved[("new", "ours")], saved[("new", "plain")]
    name = "introspect_opt>IntrospectableSGD"
    monkeypatch.delitem(tf_keras.saving.get_custom_objects(), name)  # as if not installed
    model = tf_keras.models.load_model(
        ours["paths"]["keras"], custom_objects={name: tf_keras.optimizers.SGD}
    )
    monkeypatch.undo()
    assert type(model.optimizer) is tf_keras.optimizers.SGD
    expect_state(model, ours)
    model = tf_keras.models.load_model(plain["paths"]["keras"], compile=False)
    model.compile(itk.IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    build(model)
    model.load_weights(plain["paths"]["keras"])
    expect_state(model, plain)
    assert bits(model.optimizer.current_learning_rate) == bits(SCHEDULE(UPDATES - 1))


def test_keras_file_holds_no_legacy_optimizer_state_upstream(saved: Any) -> None:
    """tf_keras's .keras format skips legacy optimizers entirely, plain or ours (upstream limit)."""
    for label in ("ours", "plain"):
        path = saved[("legacy", label)]["paths"]["keras"]
        with (
            zipfile.ZipFile(path) as archive,
            archive.open("model.weights.h5") as f,
            h5py.File(f) as weights,
        ):
            assert "optimizer" not in weights
        model = tf_keras.models.load_model(path)
        assert int(model.optimizer.iterations.numpy()) == 0


def test_weights_h5_round_trip_and_unbuilt_target(saved: Any) -> None:
    """`.weights.h5` restores everything into a built optimizer and refuses an unbuilt one."""
    entry = saved[("new", "ours")]
    model = compiled(itk.IntrospectableSGD, seed=5)
    before = cache(model.optimizer)
    with pytest.raises(RuntimeError, match=r"not built.*model\.optimizer\.build"):
        model.load_weights(entry["paths"]["weights_h5"])
    assert cache(model.optimizer) == before and int(model.optimizer.iterations.numpy()) == 0
    build(model)
    model.load_weights(entry["paths"]["weights_h5"])
    expect_state(model, entry)
    assert cache(model.optimizer) == entry["cache"]


def test_a_model_saved_right_after_compile_loads_back(tmp_path: Path) -> None:
    """A file written before the optimizer was built (step counter only) loads into a built one."""
    model = compiled(itk.IntrospectableSGD)
    model.save(tmp_path / "fresh.keras")
    loaded = tf_keras.models.load_model(tmp_path / "fresh.keras")
    assert int(loaded.optimizer.iterations.numpy()) == 0
    assert bits(loaded.optimizer.current_learning_rate) == bits(SCHEDULE(0))


def _damage(path: Path, how: str) -> None:
    with h5py.File(path, "r+") as f:
        state = f["optimizer/_introspection_state/vars"]
        if how == "extra state entry":
            state["extra"] = np.float32(1.0)
        elif how == "missing state entry":
            del state["update_count"]
        elif how == "rate as a string":
            del state["applied_learning_rate"]
            state["applied_learning_rate"] = "abc"
        elif how == "rate as a vector":
            del state["applied_learning_rate"]
            state["applied_learning_rate"] = np.zeros(3, np.float32)
        elif how == "slot of the wrong shape":
            del f["optimizer/vars/1"]
            f["optimizer/vars/1"] = np.zeros((2, 2), np.float32)
        elif how == "missing slot":
            del f["optimizer/vars/2"]
        elif how == "state without optimizer entries":
            for key in list(f["optimizer/vars"]):
                del f["optimizer/vars"][key]


DAMAGES = [
    "extra state entry",
    "missing state entry",
    "rate as a string",
    "rate as a vector",
    "slot of the wrong shape",
    "missing slot",
    "state without optimizer entries",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_file_raises_and_changes_nothing(how: str, saved: Any, tmp_path: Path) -> None:
    """Each damage raises, naming the file and the fix; the optimizer is left exactly as it was."""
    damaged = tmp_path / "damaged.weights.h5"
    shutil.copy(saved[("new", "ours")]["paths"]["weights_h5"], damaged)
    _damage(damaged, how)
    model = compiled(itk.IntrospectableSGD, seed=5)
    build(model)
    model.optimizer.apply_gradients(
        zip(
            [tf.ones_like(v) for v in model.trainable_variables],
            model.trainable_variables,
            strict=True,
        )
    )
    before, before_cache = values(model), cache(model.optimizer)
    with pytest.raises(RuntimeError, match=r"damaged\.weights\.h5.*skip_mismatch=True"):
        model.load_weights(damaged)
    assert array_bits(values(model)) == array_bits(before)
    assert cache(model.optimizer) == before_cache
    with pytest.warns(UserWarning, match="Could not load weights"):
        model.load_weights(damaged, skip_mismatch=True)
    assert array_bits(values(model)) == array_bits(before)
    assert cache(model.optimizer) == before_cache


def test_another_optimizers_file_raises_and_changes_nothing(tmp_path: Path) -> None:
    """An Adam file loaded into SGD with momentum: an error that names both counts."""
    adam = make_model()
    adam.compile(tf_keras.optimizers.Adam(), loss="mse")
    build(adam)
    adam.save_weights(tmp_path / "adam.weights.h5")
    model = compiled(itk.IntrospectableSGD)
    build(model)
    before = values(model)
    with pytest.raises(RuntimeError, match=r"holds 9 optimizer variables, this optimizer has 5"):
        model.load_weights(tmp_path / "adam.weights.h5")
    assert array_bits(values(model)) == array_bits(before)


def test_weights_of_an_uncompiled_model_leave_the_optimizer_alone(tmp_path: Path) -> None:
    """A weights file without optimizer state loads the model and warns that the optimizer stays."""
    make_model().save_weights(tmp_path / "bare.weights.h5")
    model = compiled(itk.IntrospectableSGD)
    build(model)
    with pytest.warns(UserWarning, match="holds no optimizer state"):
        model.load_weights(tmp_path / "bare.weights.h5")


# --- SavedModel ----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_savedmodel_keeps_the_state_and_load_weights_brings_it_back(
    family: str, saved: Any
) -> None:
    """tf_keras's load_model(dir) starts a fresh optimizer; the checkpoint inside restores it."""
    entry = saved[(family, "ours")]
    directory = entry["paths"]["savedmodel"]
    model = tf_keras.models.load_model(directory)
    assert type(model.optimizer) is FAMILIES[family][0]
    assert int(model.optimizer.iterations.numpy()) == 0  # upstream: optimizer not restored
    model.load_weights(str(directory / "variables" / "variables")).expect_partial()
    assert cache(model.optimizer) == entry["cache"]
    build(model)
    expect_state(model, entry)


# --- mixed precision (a LossScaleOptimizer around ours) -------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_float16_files(family: str, tmp_path: Path) -> None:
    """Under mixed_float16 .keras keeps the cache; HDF5 loads but drops new optimizers' state."""
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    x, y = make_data()
    for label, cls in zip(("ours", "plain"), FAMILIES[family], strict=True):
        model = compiled(cls)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        model.save(tmp_path / f"{label}.h5")
        if label == "ours" and family == "new":
            model.save(tmp_path / "ours.keras")
            loaded = tf_keras.models.load_model(tmp_path / "ours.keras")
            assert cache(loaded.optimizer.inner_optimizer) == cache(model.optimizer.inner_optimizer)
        loaded = tf_keras.models.load_model(tmp_path / f"{label}.h5")  # no custom_objects
        assert isinstance(loaded.optimizer.inner_optimizer, cls)
        # tf_keras's HDF5 loader calls set_weights on LossScaleOptimizerV3, which
        # refuses ("not built") and the loader swallows it: a fresh optimizer.
        assert int(loaded.optimizer.iterations.numpy()) == (0 if family == "new" else UPDATES)
        rate = itk.current_learning_rate(loaded) if label == "ours" else None
        if rate is not None:
            step = 0 if family == "new" else UPDATES - 1
            assert bits(rate) == bits(SCHEDULE(step))


def test_h5_save_weights_carries_no_optimizer_state_for_either_class(tmp_path: Path) -> None:
    """`save_weights("w.h5")` (not .weights.h5) writes layers only, plain or ours (tf_keras)."""
    model = compiled(itk.IntrospectableSGD)
    model.optimizer.apply_gradients(
        zip(
            [tf.ones_like(v) for v in model.trainable_variables],
            model.trainable_variables,
            strict=True,
        )
    )
    model.save_weights(tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5") as f:
        assert not any("optimizer" in name for name in f)
    fresh = compiled(itk.IntrospectableSGD, seed=5)
    fresh.load_weights(tmp_path / "w.h5")
    assert array_bits(fresh.get_weights()) == array_bits(model.get_weights())
    assert int(fresh.optimizer.iterations.numpy()) == 0 and update_count(fresh.optimizer) == -1


# --- saving between a checkpoint restore and the first update -------------------


def test_legacy_counter_restored_before_the_first_update_is_saved(
    saved: Any, tmp_path: Path
) -> None:
    """Plain legacy optimizers drop a restored step counter saved before their first update."""
    entry = saved[("legacy", "ours")]
    for cls in FAMILIES["legacy"]:
        model = compiled(cls, seed=5)
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
            str(entry["paths"]["checkpoint"])
        ).expect_partial()
        path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
            str(tmp_path / cls.__name__ / "ck")
        )
        names = [name for name, _ in tf.train.list_variables(path)]
        if cls is itk.IntrospectableLegacySGD:
            assert "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE" in names
            assert int(model.optimizer.iterations.numpy()) == UPDATES
            assert cache(model.optimizer) == entry["cache"]
        else:
            assert "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE" not in names  # upstream


def test_saving_slots_a_checkpoint_left_waiting_for_build_raises(
    saved: Any, tmp_path: Path
) -> None:
    """New optimizers: a .keras save before build would drop restored slots, so it refuses."""
    entry = saved[("new", "ours")]
    model = compiled(itk.IntrospectableSGD, seed=5)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
        str(entry["paths"]["checkpoint"])
    ).expect_partial()
    with pytest.raises(RuntimeError, match=r"4 slot values .*model\.optimizer\.build"):
        model.save(tmp_path / "early.keras")
    build(model)
    model.save(tmp_path / "built.keras")
    loaded = tf_keras.models.load_model(tmp_path / "built.keras")
    expect_state(loaded, entry)
    assert cache(loaded.optimizer) == entry["cache"]


# --- set_weights: what plain tf_keras converts without loss -----------------------

EXPORTED = exported_optimizers()


def _trained(cls: Any, rate: Any) -> tuple[Any, list[Any]]:
    """An optimizer after one update of two variables, and those variables."""
    variables = [tf.Variable([[1.0, 2.0], [3.0, 4.0]]), tf.Variable([0.5, -0.5])]
    optimizer = cls(rate)
    optimizer.apply_gradients(zip([tf.ones((2, 2)), tf.ones(2)], variables, strict=True))
    return optimizer, variables


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_set_weights_accepts_lossless_conversions_like_the_plain_class(name: str) -> None:
    """2.0 into the int64 counter and integers into float slots load as in plain tf_keras."""
    ours, _ = _trained(getattr(itk, name), rate_for(name))
    plain, _ = _trained(EXPORTED[name], rate_for(name))
    slots = [np.full(tuple(v.shape), 3, dtype=np.int64) for v in plain_variables(ours)[1:]]
    values = [np.array(7.0), *slots]  # every entry of the other kind than its variable
    plain.set_weights(values)
    ours.set_weights(values)
    assert int(ours.iterations.numpy()) == 7
    assert array_bits(plain_variables(ours)[1:]) == array_bits(plain_variables(plain)[1:])
    # The rate is derived from the new counter: the update that ran at counter 6.
    assert bits(ours.current_learning_rate) == bits(
        rate_for(name) if name in FLOAT_ONLY else SCHEDULE(6)
    )


@pytest.mark.parametrize(
    ("position", "value", "shown"),
    [
        (0, np.array(2.5), "2.5"),  # plain truncates it to 2
        (0, np.array(np.inf), "inf"),
        (0, np.array(2.0**63), "9.223372036854776e+18"),  # past int64
        (1, np.full((2, 2), 2**24 + 1, dtype=np.int64), "16777217"),  # not a float32
    ],
    ids=["fraction", "inf", "overflow", "inexact-int"],
)
def test_set_weights_refuses_lossy_values_and_changes_nothing(
    position: int, value: np.ndarray, shown: str
) -> None:
    """A value that would change in the conversion is refused, naming it; nothing is assigned."""
    ours = itk.IntrospectableSGD(SCHEDULE, momentum=0.9)
    variables = [tf.Variable([[1.0, 2.0], [3.0, 4.0]]), tf.Variable([0.5, -0.5])]
    ours.apply_gradients(zip([tf.ones((2, 2)), tf.ones(2)], variables, strict=True))
    before = [tf.identity(v).numpy() for v in plain_variables(ours)]
    values = [np.array(5), *[np.zeros(tuple(v.shape), "float32") for v in before[1:]]]
    values[position] = value
    with pytest.raises(
        RuntimeError, match=rf"entry {position} .*without loss \(e\.g\. {re.escape(shown)}\)"
    ):
        ours.set_weights(values)
    assert array_bits(plain_variables(ours)) == array_bits(before)
    assert update_count(ours) == 1


@pytest.mark.parametrize("name", sorted(n for n in EXPORTED if "Legacy" in n))
def test_a_loss_scale_optimizer_passes_a_float_counter_to_ours_like_to_plain(name: str) -> None:
    """tf_keras's legacy LossScaleOptimizer.set_weights([2.0, ...]) works around ours too."""
    results = []
    for cls in (getattr(itk, name), EXPORTED[name]):
        inner, _ = _trained(cls, rate_for(name))
        wrapper = tf_keras.mixed_precision.LossScaleOptimizer(inner)
        slots = [tf.identity(v).numpy() for v in inner.weights[1:]]
        wrapper.set_weights([np.array(2.0), *slots])
        assert int(inner.iterations.numpy()) == 2
        results.append(slots)
        if cls is not EXPORTED[name]:
            with pytest.raises(RuntimeError, match=r"without loss \(e\.g\. 2\.5\)"):
                wrapper.set_weights([np.array(2.5), *slots])
            assert int(inner.iterations.numpy()) == 2
    assert array_bits(results[0]) == array_bits(results[1])


# --- restores before build, and mixed-precision files ----------------------------


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_a_checkpoint_restores_a_reduced_rate_before_build(name: str, tmp_path: Path) -> None:
    """A float rate ReduceLROnPlateau set reads restored in an unbuilt optimizer, as plain."""
    for cls in (getattr(itk, name), EXPORTED[name]):
        optimizer, variables = _trained(cls, 0.1)
        optimizer.learning_rate = 0.01  # what ReduceLROnPlateau and LearningRateScheduler do
        optimizer.apply_gradients(zip([tf.ones((2, 2)), tf.ones(2)], variables, strict=True))
        optimizer.learning_rate = 0.001
        path = tf.train.Checkpoint(optimizer=optimizer).write(str(tmp_path / cls.__name__))
        fresh = cls(0.1)
        tf.train.Checkpoint(optimizer=fresh).read(path).expect_partial()
        assert bits(fresh.learning_rate) == bits(0.001)  # before any build or update
        if cls is getattr(itk, name):
            assert bits(fresh.current_learning_rate) == bits(0.01)  # what the last update used


def _mixed_precision_file(tmp_path: Path, suffix: str) -> tuple[Path, Any]:
    """A file written by a mixed_float16 model after one epoch, and its inner optimizer."""
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    model = compiled(itk.IntrospectableSGD)
    x, y = make_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    path = tmp_path / f"mixed{suffix}"
    if suffix == ".keras":
        model.save(path)
    else:
        model.save_weights(path)
    tf_keras.mixed_precision.set_global_policy("float32")
    return path, model.optimizer.inner_optimizer


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_a_mixed_precision_file_loads_into_a_float32_model(suffix: str, tmp_path: Path) -> None:
    """Unbuilt: refused at once with the build hint, nothing changed; built: all state, exact."""
    path, written = _mixed_precision_file(tmp_path, suffix)
    model = compiled(itk.IntrospectableSGD, seed=5)
    before = cache(model.optimizer)
    with pytest.raises(RuntimeError, match=r"not built.*model\.optimizer\.build"):
        model.load_weights(path)
    assert cache(model.optimizer) == before and int(model.optimizer.iterations.numpy()) == 0
    build(model)
    model.load_weights(path)
    assert array_bits(plain_variables(model.optimizer)) == array_bits(plain_variables(written))
    # The cache comes from the wrapped optimizer's group: exact, not derived.
    assert cache(model.optimizer) == cache(written) == (bits(SCHEDULE(UPDATES - 1)), UPDATES)


def test_a_mixed_precision_files_cache_is_ignored_when_its_copies_differ(tmp_path: Path) -> None:
    """The wrapped optimizer's cache is used only when its entries equal the wrapper's copy."""
    path, _ = _mixed_precision_file(tmp_path, ".weights.h5")
    with h5py.File(path, "r+") as f:
        entry = f["optimizer/inner_optimizer/vars/1"]
        entry[...] = entry[...] + 1.0  # the wrapper's copy (optimizer/vars) stays
    model = compiled(itk.IntrospectableSGD, seed=5)
    build(model)
    model.load_weights(path)
    assert int(model.optimizer.iterations.numpy()) == UPDATES
    assert update_count(model.optimizer) == -1  # derived from the restored counter
    assert bits(model.optimizer.current_learning_rate) == bits(SCHEDULE(UPDATES - 1))


def test_a_float32_file_into_a_trained_mixed_precision_model_derives_the_rate(
    saved: Any,
) -> None:
    """The wrapper loads the counter into ours and hands ours nothing: no stale cache stays."""
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    model = compiled(itk.IntrospectableSGD, seed=5)
    x, y = make_data(n=16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 2 updates: cached s(1)
    inner = model.optimizer.inner_optimizer
    assert update_count(inner) == 2
    with pytest.warns(UserWarning, match="holds no optimizer state"):
        model.load_weights(saved[("new", "ours")]["paths"]["weights_h5"])
    assert int(inner.iterations.numpy()) == UPDATES
    assert bits(inner.current_learning_rate) == bits(SCHEDULE(UPDATES - 1))
