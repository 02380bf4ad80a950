"""Nothing is ever lost, in any format, in either direction (docs/persistence.md)."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import SCHEDULE, bits, make_data, make_model, optimizer_state, schedule_value

from introspect_opt import IntrospectableSGD, current_learning_rate


def _trained(optimizer: Any, steps: int = 5, seed: int = 0) -> Any:
    model = make_model(seed)
    model.compile(optimizer, loss="mse")
    x, y = make_data(8 * steps)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    return model


def _compiled(optimizer: Any, built: bool = True) -> Any:
    model = make_model(seed=7)
    model.compile(optimizer, loss="mse")
    if built:
        optimizer.build(model.trainable_variables)
    return model


def _assert_same_state(a: Any, b: Any) -> None:
    sa, sb = optimizer_state(a), optimizer_state(b)
    assert len(sa) == len(sb)
    for va, vb in zip(sa, sb, strict=True):
        np.testing.assert_array_equal(va, vb)


def _assert_restored(a: Any, b: Any) -> None:
    """Same optimizer variables and the same cached bits (through a LossScaleOptimizer)."""
    _assert_same_state(a, b)
    assert bits(current_learning_rate(a)) == bits(current_learning_rate(b))


# --- tf.train.Checkpoint -------------------------------------------------------


@pytest.mark.tf_only
def test_checkpoint_round_trip_into_built_optimizer(tmp_path: Path) -> None:
    """A checkpoint restores iterations, slots and the cached bits exactly."""
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9))
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(tmp_path / "ck")
    expected = bits(model.optimizer.current_learning_rate)
    restored = _compiled(IntrospectableSGD(SCHEDULE, momentum=0.9))
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).restore(
        path
    ).assert_consumed()
    _assert_same_state(model.optimizer, restored.optimizer)
    assert bits(restored.optimizer.current_learning_rate) == expected


@pytest.mark.tf_only
def test_checkpoint_deferred_restoration_into_unbuilt_optimizer(tmp_path: Path) -> None:
    """Restored before the optimizer is built, the slots arrive when fit builds it."""
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=5)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(tmp_path / "ck")
    reference = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=5)

    fresh_model = make_model(seed=3)
    fresh = IntrospectableSGD(SCHEDULE, momentum=0.9)
    fresh_model.compile(fresh, loss="mse")
    status = tf.train.Checkpoint(model=fresh_model, optimizer=fresh).restore(path)
    # The slots wait for build (which may be for a part of the model only, a
    # custom loop), read from the file now; the step counter is back.
    status.assert_existing_objects_matched()
    assert not fresh.built and int(fresh.iterations) == 5
    x, y = make_data(16, seed=5)
    fresh_model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    reference.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert int(fresh.iterations) == 7
    assert bits(fresh.current_learning_rate) == bits(reference.optimizer.current_learning_rate)
    _assert_same_state(fresh, reference.optimizer)
    for a, b in zip(fresh_model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.tf_only
def test_checkpoint_from_plain_sgd_derives_the_rate(tmp_path: Path) -> None:
    """A plain-SGD checkpoint restores into IntrospectableSGD; the rate is s(n-1)."""
    model = _trained(keras.optimizers.SGD(SCHEDULE, momentum=0.9), steps=6)
    path = tf.train.Checkpoint(optimizer=model.optimizer).save(tmp_path / "ck")
    # Into a fresh one and into one that has already trained further.
    for steps in (0, 9):
        optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
        restored = _trained(optimizer, steps=steps) if steps else _compiled(optimizer)
        tf.train.Checkpoint(optimizer=optimizer).restore(path).expect_partial()
        _assert_same_state(model.optimizer, optimizer)
        assert int(optimizer.iterations) == 6
        assert float(optimizer.current_learning_rate) == schedule_value(SCHEDULE, 5)
        assert restored.optimizer is optimizer


@pytest.mark.tf_only
def test_checkpoint_into_plain_sgd(tmp_path: Path) -> None:
    """An IntrospectableSGD checkpoint restores into plain SGD, slots intact."""
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9))
    path = tf.train.Checkpoint(optimizer=model.optimizer).save(tmp_path / "ck")
    plain = keras.optimizers.SGD(SCHEDULE, momentum=0.9)
    _compiled(plain)
    tf.train.Checkpoint(optimizer=plain).restore(path).expect_partial()
    _assert_same_state(model.optimizer, plain)


@pytest.mark.tf_only
def test_checkpoint_float_rate_round_trip(tmp_path: Path) -> None:
    """With a float rate the variable and the cache both come back."""
    model = _trained(IntrospectableSGD(0.05, momentum=0.5))
    model.optimizer.learning_rate = 0.01  # set, not yet applied
    path = tf.train.Checkpoint(optimizer=model.optimizer).save(tmp_path / "ck")
    optimizer = IntrospectableSGD(0.3, momentum=0.5)
    _compiled(optimizer)
    tf.train.Checkpoint(optimizer=optimizer).restore(path).assert_existing_objects_matched()
    assert float(optimizer.current_learning_rate) == np.float32(0.05)
    assert float(optimizer.learning_rate) == np.float32(0.01)


# --- .keras and .weights.h5 ----------------------------------------------------


def test_keras_file_round_trip(tmp_path: Path) -> None:
    """model.save / load_model: same class, config, state and cached bits."""
    optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9, nesterov=True, clipnorm=1.0)
    model = _trained(optimizer)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is IntrospectableSGD
    assert loaded.optimizer.get_config() == optimizer.get_config()
    _assert_restored(optimizer, loaded.optimizer)


def test_keras_file_round_trip_continues_identically(tmp_path: Path) -> None:
    """Training resumed from a .keras file matches uninterrupted training exactly."""
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=4)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    x, y = make_data(32, seed=9)
    for m in (model, loaded):
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert bits(model.optimizer.current_learning_rate) == bits(
        loaded.optimizer.current_learning_rate
    )


@pytest.mark.parametrize("fmt", ["weights.h5", "keras"])
def test_weights_into_built_introspectable(tmp_path: Path, fmt: str) -> None:
    """load_weights restores the optimizer state and the cached bits."""
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9))
    path = tmp_path / f"m.{fmt}"
    model.save_weights(path) if fmt == "weights.h5" else model.save(path)
    restored = _compiled(IntrospectableSGD(SCHEDULE, momentum=0.9))
    restored.load_weights(path)
    _assert_restored(model.optimizer, restored.optimizer)


def test_weights_into_unbuilt_optimizer_wait_for_its_build(tmp_path: Path) -> None:
    """compile, load_weights, fit: the slots wait for the build, which restores them in full."""
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=4)
    model.save_weights(tmp_path / "m.weights.h5")
    reference = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=4)

    fresh = IntrospectableSGD(SCHEDULE, momentum=0.9)
    restored = _compiled(fresh, built=False)
    restored.load_weights(tmp_path / "m.weights.h5")
    # Nothing says which variables it will train: it does not guess.
    assert not fresh.built and int(fresh.iterations) == 4
    fresh.build(restored.trainable_variables)
    _assert_restored(model.optimizer, fresh)
    x, y = make_data(16, seed=4)
    for m in (restored, reference):
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert int(fresh.iterations) == 6
    _assert_restored(fresh, reference.optimizer)
    for a, b in zip(restored.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_plain_sgd_files_load_into_introspectable(tmp_path: Path) -> None:
    """.weights.h5 and .keras written with SGD restore into IntrospectableSGD."""
    model = _trained(keras.optimizers.SGD(SCHEDULE, momentum=0.9), steps=6)
    model.save_weights(tmp_path / "m.weights.h5")
    model.save(tmp_path / "m.keras")

    restored = _compiled(IntrospectableSGD(SCHEDULE, momentum=0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        restored.load_weights(tmp_path / "m.weights.h5")
    _assert_same_state(model.optimizer, restored.optimizer)
    assert float(restored.optimizer.current_learning_rate) == schedule_value(SCHEDULE, 5)

    # A .keras file names its optimizer class; the documented recipe to switch
    # class is: load without compiling, compile with ours, load the weights.
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    loaded.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    loaded.optimizer.build(loaded.trainable_variables)
    loaded.load_weights(tmp_path / "m.keras")
    _assert_same_state(model.optimizer, loaded.optimizer)
    assert float(loaded.optimizer.current_learning_rate) == schedule_value(SCHEDULE, 5)


@pytest.mark.slow  # a fresh process, as where introspect-opt is not installed
def test_introspectable_files_load_into_plain_sgd(tmp_path: Path) -> None:
    """.weights.h5 and .keras written with IntrospectableSGD restore into SGD."""
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=6)
    model.save_weights(tmp_path / "m.weights.h5")
    model.save(tmp_path / "m.keras")

    plain = keras.optimizers.SGD(SCHEDULE, momentum=0.9)
    restored = _compiled(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # Keras warns when it skips optimizer state
        restored.load_weights(tmp_path / "m.weights.h5")
    _assert_same_state(model.optimizer, plain)

    # Where introspect_opt is not installed, custom_objects maps its registered
    # name to SGD. (In a process that imported it, the registration wins.)
    np.savez(tmp_path / "expected.npz", *optimizer_state(model.optimizer))
    script = f"""
import os, sys, warnings
import numpy as np, keras
assert "introspect_opt" not in sys.modules
warnings.simplefilter("error", UserWarning)
model = keras.models.load_model(
    {str(tmp_path / "m.keras")!r},
    custom_objects={{"introspect_opt>IntrospectableSGD": keras.optimizers.SGD}},
)
assert type(model.optimizer) is keras.optimizers.SGD, type(model.optimizer)
expected = np.load({str(tmp_path / "expected.npz")!r})
state = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
assert len(state) == len(expected.files)
for i, value in enumerate(state):
    np.testing.assert_array_equal(value, expected[f"arr_{{i}}"])
print("plain-sgd-ok")
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plain-sgd-ok" in done.stdout


def test_mixed_precision_keras_file_round_trip(tmp_path: Path) -> None:
    """Through a LossScaleOptimizer the inner cache and the loss scale survive."""
    keras.config.set_dtype_policy("mixed_float16")
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer.inner_optimizer, IntrospectableSGD)
    _assert_restored(model.optimizer, loaded.optimizer)
    if keras.backend.backend() == "jax":
        # On JAX the cache is listed in optimizer.variables (fit carries only
        # those), so LossScaleOptimizer's own entry counts it: docs/persistence.md.
        return
    # And into a plain-SGD LossScaleOptimizer, without Keras's silent skip.
    plain = make_model(seed=2)
    plain.compile(keras.optimizers.SGD(SCHEDULE, momentum=0.9), loss="mse")
    plain.optimizer.build(plain.trainable_variables)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        plain.load_weights(tmp_path / "m.keras")
    _assert_same_state(model.optimizer, plain.optimizer)


# --- Errors: nothing silently skipped, nothing half-loaded ---------------------


def _mismatched(tmp_path: Path) -> tuple[Any, Path, Any, list[np.ndarray]]:
    """A file written without momentum, and a trained optimizer with momentum."""
    model = _trained(keras.optimizers.SGD(SCHEDULE, momentum=0.0), steps=3)
    path = tmp_path / "plain.weights.h5"
    model.save_weights(path)
    target = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=2)
    return model, path, target, optimizer_state(target.optimizer)


def test_mismatched_optimizer_state_raises_and_loads_nothing(tmp_path: Path) -> None:
    """A file from another configuration: clear error, optimizer untouched."""
    _, path, target, before = _mismatched(tmp_path)
    with pytest.raises(ValueError) as info:
        target.load_weights(path)
    message = str(info.value)
    assert "plain.weights.h5" in message
    assert f"IntrospectableSGD '{target.optimizer.name}'" in message
    assert "holds 1 optimizer variables, this optimizer has" in message
    assert "skip_mismatch=True" in message
    for a, b in zip(before, optimizer_state(target.optimizer), strict=True):
        np.testing.assert_array_equal(a, b)


def test_adam_state_into_introspectable_sgd_raises(tmp_path: Path) -> None:
    """State of a different optimizer class is refused, not half-loaded."""
    model = _trained(keras.optimizers.Adam(1e-3), steps=2)
    model.save_weights(tmp_path / "adam.weights.h5")
    target = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=1)
    before = optimizer_state(target.optimizer)
    with pytest.raises(ValueError, match=r"adam\.weights\.h5.*holds 10 optimizer variables"):
        target.load_weights(tmp_path / "adam.weights.h5")
    for a, b in zip(before, optimizer_state(target.optimizer), strict=True):
        np.testing.assert_array_equal(a, b)


def test_skip_mismatch_keeps_its_meaning(tmp_path: Path) -> None:
    """With skip_mismatch=True the mismatch is a warning and the state is kept."""
    model, path, target, before = _mismatched(tmp_path)
    rate = bits(target.optimizer.current_learning_rate)
    with pytest.warns(UserWarning, match="holds 1 optimizer variables"):
        target.load_weights(path, skip_mismatch=True)
    for a, b in zip(before, optimizer_state(target.optimizer), strict=True):
        np.testing.assert_array_equal(a, b)
    assert bits(target.optimizer.current_learning_rate) == rate
    for a, b in zip(model.get_weights(), target.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_slots_for_other_variables_wait_for_the_build_which_refuses_them(tmp_path: Path) -> None:
    """Slots for other layers: kept until build (it may be a part of the model), refused there."""
    model = _trained(keras.optimizers.SGD(SCHEDULE, momentum=0.9), steps=3)
    model.save_weights(tmp_path / "m.weights.h5")
    bigger = make_model(seed=1, hidden=4)
    optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
    bigger.compile(optimizer, loss="mse")
    with pytest.warns(UserWarning, match="could not be loaded"):  # the layers differ
        bigger.load_weights(tmp_path / "m.weights.h5", skip_mismatch=True)
    assert int(optimizer.iterations) == 3  # restored at once, slots wait for build
    # build() cannot know the load asked to skip mismatches: it raises.
    with pytest.raises(ValueError, match=r"m\.weights\.h5.*has shape \(8, 4\).*\(8, 16\)"):
        optimizer.build(bigger.trainable_variables)
    assert int(optimizer.iterations) == 0
    assert not any(slot.any() for slot in optimizer_state(optimizer)[2:])


def test_mismatch_of_the_optimizer_config_raises_at_build_and_rolls_back(tmp_path: Path) -> None:
    """Same layers, other slots (EMA): refused at build; the optimizer is as before the load."""
    model = _trained(keras.optimizers.SGD(SCHEDULE, momentum=0.9), steps=3)
    model.save_weights(tmp_path / "m.weights.h5")
    target = make_model(seed=0)
    optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9, use_ema=True)
    target.compile(optimizer, loss="mse")
    target.load_weights(tmp_path / "m.weights.h5")
    with pytest.raises(ValueError, match=r"m\.weights\.h5.*could only be matched"):
        optimizer.build(target.trainable_variables)
    assert int(optimizer.iterations) == 0
    assert bits(optimizer.current_learning_rate) == bits(SCHEDULE(0))


def test_a_custom_loop_on_part_of_the_model_restores_exactly(tmp_path: Path) -> None:
    """compile, then train the head only: files and checkpoints restore into the head's slots."""

    def run(optimizer: Any, model: Any, steps: int) -> None:
        for _ in range(steps):
            head = model.layers[-1].trainable_variables
            optimizer.apply_gradients([(keras.ops.ones(v.shape), v) for v in head])

    writer = make_model()
    writer.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    run(writer.optimizer, writer, 3)
    writer.save_weights(tmp_path / "m.weights.h5")
    reader = make_model()
    reader.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    reader.load_weights(tmp_path / "m.weights.h5")
    assert not reader.optimizer.built  # its layout is not the whole model's: it waits
    run(reader.optimizer, reader, 1)
    run(writer.optimizer, writer, 1)
    _assert_restored(writer.optimizer, reader.optimizer)


def test_state_loaded_into_an_unbuilt_optimizer_is_visible_and_saved_again(
    tmp_path: Path,
) -> None:
    """After the load: iterations and the exact rate show; saving keeps the slots."""
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=4)
    model.save_weights(tmp_path / "a.weights.h5")
    optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
    unbuilt = _compiled(optimizer, built=False)
    unbuilt.load_weights(tmp_path / "a.weights.h5")
    assert int(optimizer.iterations) == 4
    assert bits(optimizer.current_learning_rate) == bits(model.optimizer.current_learning_rate)
    unbuilt.save_weights(tmp_path / "b.weights.h5")
    again = _compiled(IntrospectableSGD(SCHEDULE, momentum=0.9))
    again.load_weights(tmp_path / "b.weights.h5")
    _assert_restored(model.optimizer, again.optimizer)


def test_a_file_saved_before_build_does_not_load_over_trained_state(tmp_path: Path) -> None:
    """A step-0 file without slots into an optimizer that trained: an error, nothing changed."""
    fresh = make_model(seed=0)
    fresh.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    fresh.save_weights(tmp_path / "fresh.weights.h5")  # saved before any build
    trained = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=4)
    before = optimizer_state(trained.optimizer)
    with pytest.raises(ValueError, match="holds 1 optimizer variables, this optimizer has 5"):
        trained.load_weights(tmp_path / "fresh.weights.h5")
    for a, b in zip(before, optimizer_state(trained.optimizer), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs", [dict(momentum=0.9), dict(use_ema=True), dict()])
def test_file_saved_after_compile_before_training_loads(tmp_path: Path, kwargs: Any) -> None:
    """A model saved right after compile loads back (its optimizer never built)."""
    model = make_model(seed=0)
    model.compile(IntrospectableSGD(0.05, **kwargs), loss="mse")
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is IntrospectableSGD
    assert float(loaded.optimizer.current_learning_rate) == np.float32(0.05)
    x, y = make_data(16)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == 2
    # Into an optimizer that has trained, the untrained file does not fit.
    if kwargs:
        with pytest.raises(ValueError, match=r"m\.weights\.h5.*holds \d optimizer variables"):
            loaded.load_weights(tmp_path / "m.weights.h5")


def test_file_without_optimizer_state_warns_and_keeps_state(tmp_path: Path) -> None:
    """Weights saved before compile carry no optimizer state: said, not hidden."""
    uncompiled = make_model(seed=0)
    uncompiled.save_weights(tmp_path / "m.weights.h5")
    target = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=2)
    before = optimizer_state(target.optimizer)
    with pytest.warns(UserWarning, match="holds no state for IntrospectableSGD"):
        target.load_weights(tmp_path / "m.weights.h5")
    for a, b in zip(before, optimizer_state(target.optimizer), strict=True):
        np.testing.assert_array_equal(a, b)


# --- pickle / deepcopy ---------------------------------------------------------


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))])
def test_pickle_and_deepcopy(clone: Any) -> None:
    """Copies keep class and config; a trained one's state returns when built."""
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9))
    optimizer = model.optimizer
    copied = clone(optimizer)
    assert type(copied) is IntrospectableSGD
    assert copied.get_config() == optimizer.get_config()
    copied.build(make_model(seed=4).trainable_variables)
    _assert_restored(optimizer, copied)
    fresh = clone(IntrospectableSGD(0.02))
    assert float(fresh.current_learning_rate) == np.float32(0.02)


def test_reads_from_another_thread_during_build_return_a_value() -> None:
    """A monitoring thread reading current_learning_rate while the optimizer builds never fails."""
    import threading

    errors: list[BaseException] = []
    done = threading.Event()
    holder: dict[str, Any] = {}

    def read() -> None:
        while not done.is_set():
            optimizer = holder.get("optimizer")
            if optimizer is not None:
                try:
                    float(optimizer.current_learning_rate)
                except BaseException as error:  # any failure is the bug
                    errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(30):
            model = make_model()
            optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
            holder["optimizer"] = optimizer
            optimizer.build(model.trainable_variables)
    finally:
        done.set()
        reader.join()
    assert not errors, errors[:3]


def _next_rates(optimizer: Any, steps: int, variables: list[Any]) -> list[int]:
    """The bits of the rate each of the next ``steps`` updates applies."""
    out = []
    for _ in range(steps):
        optimizer.apply_gradients([(keras.ops.ones(v.shape), v) for v in variables])
        out.append(bits(optimizer.current_learning_rate))
    return out


@pytest.mark.parametrize("rate", ["float", "schedule"])
def test_config_round_trip_applies_the_same_rate_after_callbacks(rate: str) -> None:
    """from_config(get_config()) applies the rate the original applies, whatever set it."""
    from introspect_opt._features.plateau import MULTIPLIER, set_multiplier

    original = IntrospectableSGD(0.02 if rate == "float" else SCHEDULE, momentum=0.9)
    model = make_model()
    original.build(model.trainable_variables)
    original._ensure_introspection_state().enable(original, MULTIPLIER.name)
    set_multiplier(original, 0.5)  # as ScaleLearningRateOnPlateau does
    if rate == "float":
        original.learning_rate = 0.01  # as LearningRateScheduler does
    clone = IntrospectableSGD.from_config(original.get_config())
    clone_model = make_model()
    clone.build(clone_model.trainable_variables)
    assert bits(clone.learning_rate) == bits(original.learning_rate)
    assert _next_rates(clone, 3, clone_model.trainable_variables) == _next_rates(
        original, 3, model.trainable_variables
    )


def test_a_loaded_multiplier_shows_in_learning_rate_at_once(tmp_path: Path) -> None:
    """After load_weights into an unbuilt optimizer, learning_rate has the file's multiplier."""
    from introspect_opt import ScaleLearningRateOnPlateau

    model = _compiled(IntrospectableSGD(SCHEDULE))
    x, y = make_data(16)
    plateau = ScaleLearningRateOnPlateau("loss", factor=0.5, patience=0, min_delta=1e9)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[plateau])
    model.save_weights(tmp_path / "m.weights.h5")
    target = _compiled(IntrospectableSGD(SCHEDULE), built=False)
    target.load_weights(tmp_path / "m.weights.h5")
    assert bits(target.optimizer.learning_rate) == bits(model.optimizer.learning_rate)
    assert bits(target.optimizer.current_learning_rate) == bits(
        model.optimizer.current_learning_rate
    )


@pytest.mark.tf_only
def test_restored_without_its_model_then_saved_with_it(tmp_path: Path) -> None:
    """Checkpoint(optimizer=...) restores into an unbuilt optimizer; model.save writes its slots."""
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=4)
    path = tf.train.Checkpoint(optimizer=model.optimizer).write(str(tmp_path / "ck"))
    optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
    target = _compiled(optimizer, built=False)
    target.set_weights(model.get_weights())
    tf.train.Checkpoint(optimizer=optimizer).read(path)
    assert not optimizer.built  # nothing says which variables it trains: its slots wait
    target.save(tmp_path / "m.keras")  # writes the waiting slots, with the manifest
    loaded = keras.models.load_model(tmp_path / "m.keras")
    _assert_restored(model.optimizer, loaded.optimizer)


@pytest.mark.tf_only
def test_waiting_state_is_in_every_save(tmp_path: Path) -> None:
    """Slots waiting for a build reach pickle and checkpoints, and restore from each."""
    model = _trained(IntrospectableSGD(SCHEDULE, momentum=0.9), steps=4)
    path = tf.train.Checkpoint(optimizer=model.optimizer).write(str(tmp_path / "ck"))
    optimizer = IntrospectableSGD(SCHEDULE, momentum=0.9)
    tf.train.Checkpoint(optimizer=optimizer).read(path)
    queued = pickle.loads(pickle.dumps(optimizer))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = tf.train.Checkpoint(optimizer=queued).write(str(tmp_path / "queued"))
    for source in (optimizer, queued):
        source.build(_compiled(IntrospectableSGD(0.1)).trainable_variables)
        _assert_restored(model.optimizer, source)
    plain = keras.optimizers.SGD(SCHEDULE, momentum=0.9)
    plain.build(_compiled(IntrospectableSGD(0.1)).trainable_variables)
    tf.train.Checkpoint(optimizer=plain).read(again).expect_partial()
    _assert_same_state(model.optimizer, plain)


@pytest.mark.tf_only
def test_a_checkpoint_of_a_custom_loop_on_part_of_the_model_restores_exactly(
    tmp_path: Path,
) -> None:
    """Restored before build, the slots wait for the variables the loop trains, as in Keras."""

    def run(optimizer: Any, model: Any, steps: int) -> None:
        head = model.layers[-1].trainable_variables
        for _ in range(steps):
            optimizer.apply_gradients([(keras.ops.ones(v.shape), v) for v in head])

    writer = make_model()
    writer.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    run(writer.optimizer, writer, 3)
    path = tf.train.Checkpoint(model=writer, optimizer=writer.optimizer).write(str(tmp_path / "ck"))
    reader = make_model()
    reader.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    tf.train.Checkpoint(model=reader, optimizer=reader.optimizer).read(path)
    run(reader.optimizer, reader, 1)
    run(writer.optimizer, writer, 1)
    _assert_restored(writer.optimizer, reader.optimizer)
    for a, b in zip(writer.get_weights(), reader.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
