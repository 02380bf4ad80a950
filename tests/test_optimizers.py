"""Every Keras optimizer, introspectable: one parameterized suite (TensorFlow backend)."""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    JIT_MODES,
    KERAS_OPTIMIZERS,
    SCHEDULE,
    bits,
    make_data,
    make_model,
    optimizer_state,
    schedule_value,
)

import introspect_opt
from introspect_opt._keras3.factory import ready_made


def _pair(name: str) -> tuple[Any, Any]:
    plain_cls = getattr(keras.optimizers, name)
    return plain_cls, getattr(introspect_opt, f"Introspectable{name}")


def test_every_keras_optimizer_has_a_ready_made_class() -> None:
    """A Keras release that adds an optimizer fails here until the table has its line."""
    assert len(KERAS_OPTIMIZERS) >= 13
    missing = [n for n in KERAS_OPTIMIZERS if f"Introspectable{n}" not in introspect_opt.__all__]
    assert not missing, "\n".join(
        f"keras.optimizers.{name} has no ready-made class. Add this line to the table in "
        f"introspect_opt/_keras3/optimizers.py (the one place to edit): class "
        f"Introspectable{name}(IntrospectableOptimizer, _keras.optimizers.{name}): ..."
        for name in missing
    )
    ready_made = {n for n in introspect_opt.__all__ if n.startswith("Introspectable")}
    assert ready_made - {"IntrospectableOptimizer"} == {
        f"Introspectable{n}" for n in KERAS_OPTIMIZERS
    }
    for name in KERAS_OPTIMIZERS:
        plain_cls, ours = _pair(name)
        assert issubclass(ours, plain_cls)
        assert introspect_opt.introspectable(plain_cls) is ours
        assert keras.saving.get_registered_name(ours) == f"introspect_opt>Introspectable{name}"
    assert "Args:" in introspect_opt.IntrospectableSGD.__doc__  # its own docstring kept


def test_the_table_refuses_a_malformed_line() -> None:
    """Table lines other than `class Introspectable<Name>(IntrospectableOptimizer, <Name>)`."""

    class IntrospectableAdamm(introspect_opt.IntrospectableOptimizer, keras.optimizers.Adam): ...

    class IntrospectableNadam(introspect_opt.IntrospectableOptimizer, keras.optimizers.Nadam):
        def update_step(self, *args: Any) -> None: ...

    class IntrospectableLion(keras.optimizers.Lion): ...

    with pytest.raises(
        TypeError, match=r"IntrospectableAdamm extends Adam: name it IntrospectableAdam\."
    ):
        ready_made(IntrospectableAdamm)
    for declared in (IntrospectableNadam, IntrospectableLion):
        with pytest.raises(TypeError, match=r"declare a ready-made class as `class Intro"):
            ready_made(declared)
    assert introspect_opt.introspectable(keras.optimizers.Adam) is introspect_opt.IntrospectableAdam


def _built(optimizer: Any) -> Any:
    """A compiled model whose optimizer is built (no training)."""
    model = make_model(seed=5)
    model.compile(optimizer, loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _fit(optimizer: Any, jit_compile: Any, epochs: int = 2, hidden: int = 16) -> Any:
    model = make_model(seed=5, hidden=hidden)
    model.compile(optimizer, loss="mse", jit_compile=jit_compile)
    x, y = make_data(64, seed=6)
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, shuffle=False)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", JIT_MODES)
# SGD has its own, more thorough numerics suite (test_numerics.py).
@pytest.mark.parametrize("name", [n for n in KERAS_OPTIMIZERS if n != "SGD"])
def test_bit_identical_fit_and_applied_rate(name: str, jit_compile: bool) -> None:
    """Weights and slots equal the plain class's after a 2-epoch fit; the rate is s(n-1)."""
    plain_cls, ours = _pair(name)
    # A narrow model: the cost is tracing (and XLA compiling), not the steps.
    plain = _fit(plain_cls(SCHEDULE), jit_compile, hidden=4)
    mine = _fit(ours(SCHEDULE), jit_compile, hidden=4)
    for a, b in zip(plain.get_weights(), mine.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(optimizer_state(plain.optimizer), optimizer_state(mine.optimizer), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(mine.optimizer.iterations) == 8
    np.testing.assert_allclose(
        float(mine.optimizer.current_learning_rate), schedule_value(SCHEDULE, 7), rtol=1e-6
    )


@pytest.mark.parametrize("name", KERAS_OPTIMIZERS)
def test_eager_rate_rules(name: str) -> None:
    """Eager apply_gradients: before any update s(0), after n updates s(n-1)."""
    _, ours = _pair(name)
    optimizer = ours(SCHEDULE)
    model = make_model()
    assert float(optimizer.current_learning_rate) == schedule_value(SCHEDULE, 0)
    for n in range(1, 4):
        optimizer.apply_gradients([(keras.ops.ones(v.shape), v) for v in model.trainable_variables])
        assert float(optimizer.current_learning_rate) == schedule_value(SCHEDULE, n - 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", KERAS_OPTIMIZERS)
def test_files_round_trip_and_interchange(tmp_path: Path, name: str) -> None:
    """.keras, .weights.h5 and checkpoints: exact, and interchangeable with the plain class."""
    plain_cls, ours = _pair(name)
    mine = _fit(ours(SCHEDULE), jit_compile=False, epochs=1)
    expected = bits(mine.optimizer.current_learning_rate)
    mine.save(tmp_path / "m.keras")
    mine.save_weights(tmp_path / "m.weights.h5")

    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is ours
    assert loaded.optimizer.get_config() == mine.optimizer.get_config()
    assert bits(loaded.optimizer.current_learning_rate) == expected
    for a, b in zip(
        optimizer_state(mine.optimizer), optimizer_state(loaded.optimizer), strict=True
    ):
        np.testing.assert_array_equal(a, b)

    plain = _built(plain_cls(SCHEDULE))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        plain.load_weights(tmp_path / "m.weights.h5")
    for a, b in zip(optimizer_state(mine.optimizer), optimizer_state(plain.optimizer), strict=True):
        np.testing.assert_array_equal(a, b)
    plain.save_weights(tmp_path / "plain.weights.h5")
    back = _built(ours(SCHEDULE))
    back.load_weights(tmp_path / "plain.weights.h5")
    assert int(back.optimizer.iterations) == 4
    np.testing.assert_allclose(
        float(back.optimizer.current_learning_rate), schedule_value(SCHEDULE, 3), rtol=1e-6
    )


@pytest.mark.slow
@pytest.mark.tf_only
@pytest.mark.parametrize("name", KERAS_OPTIMIZERS)
def test_checkpoint_round_trip(tmp_path: Path, name: str) -> None:
    """tf.train.Checkpoint restores every variable and the cached bits."""
    _, ours = _pair(name)
    mine = _fit(ours(SCHEDULE), jit_compile=False, epochs=1)
    checkpoint = tf.train.Checkpoint(optimizer=mine.optimizer).save(tmp_path / "ck")
    restored = _built(ours(SCHEDULE))
    tf.train.Checkpoint(optimizer=restored.optimizer).restore(checkpoint).assert_consumed()
    assert bits(restored.optimizer.current_learning_rate) == bits(
        mine.optimizer.current_learning_rate
    )


@pytest.mark.parametrize("name", KERAS_OPTIMIZERS)
def test_config_round_trip(name: str) -> None:
    """get_config / from_config and Keras (de)serialization keep the class."""
    _, ours = _pair(name)
    optimizer = ours(SCHEDULE)
    config = optimizer.get_config()
    assert ours.from_config(copy.deepcopy(config)).get_config() == config
    assert type(keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))) is ours


# --- introspect(): instances somebody else built --------------------------------


def test_introspect_an_unbuilt_instance() -> None:
    """Switched in place; isinstance still holds; training is bit-identical."""
    optimizer = keras.optimizers.Adam(SCHEDULE)
    same = introspect_opt.introspect(optimizer)
    assert same is optimizer
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert type(optimizer) is introspect_opt.IntrospectableAdam
    mine = _fit(optimizer, jit_compile="auto")
    plain = _fit(keras.optimizers.Adam(SCHEDULE), jit_compile="auto")
    for a, b in zip(plain.get_weights(), mine.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert introspect_opt.introspect(optimizer) is optimizer  # idempotent


def test_introspect_a_trained_instance_from_load_model(tmp_path: Path) -> None:
    """A plain optimizer loaded from a file: derived rate now, exact after the next update."""
    plain_model = _fit(keras.optimizers.RMSprop(SCHEDULE), jit_compile=False, epochs=1)
    plain_model.save(tmp_path / "plain.keras")
    reference = keras.models.load_model(tmp_path / "plain.keras")
    model = keras.models.load_model(tmp_path / "plain.keras")
    optimizer = introspect_opt.introspect(model.optimizer)
    assert isinstance(optimizer, keras.optimizers.RMSprop)
    np.testing.assert_allclose(
        float(optimizer.current_learning_rate), schedule_value(SCHEDULE, 3), rtol=1e-6
    )
    x, y = make_data(32, seed=8)
    for m in (model, reference):
        m.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(reference.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        float(optimizer.current_learning_rate), schedule_value(SCHEDULE, 5), rtol=1e-6
    )
    model.save(tmp_path / "ours.keras")
    again = keras.models.load_model(tmp_path / "ours.keras")
    assert type(again.optimizer) is introspect_opt.IntrospectableRMSprop
    assert bits(again.optimizer.current_learning_rate) == bits(optimizer.current_learning_rate)


@keras.saving.register_keras_serializable(package="tests")
class HalfSGD(keras.optimizers.SGD):
    """A user optimizer: plain SGD at half the rate."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        super().update_step(gradient, variable, keras.ops.multiply(learning_rate, 0.5))


def test_user_subclass(tmp_path: Path) -> None:
    """introspectable() works for user classes, is cached, and round-trips."""
    cls = introspect_opt.introspectable(HalfSGD)
    assert cls is introspect_opt.introspectable(HalfSGD)
    assert cls.__name__ == "IntrospectableHalfSGD" and issubclass(cls, HalfSGD)
    assert (
        keras.saving.get_registered_name(cls) == f"introspect_opt.{__name__}>IntrospectableHalfSGD"
    )
    model = _fit(cls(SCHEDULE), jit_compile=False, epochs=1)
    # The rate Keras passed to update_step, not what the subclass did with it.
    assert float(model.optimizer.current_learning_rate) == pytest.approx(
        float(schedule_value(SCHEDULE, 3)), rel=1e-6
    )
    model.save(tmp_path / "m.keras")
    assert type(keras.models.load_model(tmp_path / "m.keras").optimizer) is cls
    copied = pickle.loads(pickle.dumps(cls(0.1)))
    assert type(copied) is cls


def test_default_names_are_the_plain_classes() -> None:
    """Unnamed, an introspectable optimizer is named (and its variables pathed) as the plain one."""
    for name in KERAS_OPTIMIZERS:
        plain_cls, ours = _pair(name)
        keras.backend.clear_session(free_memory=False)  # fresh name counters for each
        expected = plain_cls().name
        keras.backend.clear_session(free_memory=False)
        assert ours().name == expected, name
        assert ours().name == f"{expected}_1", name  # the plain class's counter, too
    optimizer = introspect_opt.IntrospectableAdam(name="mine")
    assert optimizer.name == "mine"
    optimizer.build(make_model().trainable_variables)
    assert all(v.path.startswith("mine/") for v in optimizer.variables)


def test_current_learning_rate_helper() -> None:
    """Accepts an optimizer, a LossScaleOptimizer around one, or a compiled model."""
    keras.config.set_dtype_policy("mixed_float16")
    model = make_model()
    model.compile(introspect_opt.IntrospectableAdam(0.02), loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    for obj in (model, model.optimizer, model.optimizer.inner_optimizer):
        assert float(introspect_opt.current_learning_rate(obj)) == np.float32(0.02)
    plain = keras.optimizers.Adam(0.02, name="adam_of_someone")
    plain_message = r"Adam 'adam_of_someone' is a plain Keras optimizer.*introspect\(optimizer\)"
    with pytest.raises(TypeError, match=plain_message):
        introspect_opt.current_learning_rate(plain)
    with pytest.raises(TypeError, match="received 3"):
        introspect_opt.current_learning_rate(3)


def test_bad_input_names_what_was_received() -> None:
    """Non-optimizers, classes vs instances, and wrappers get actionable TypeErrors."""
    with pytest.raises(
        TypeError, match=r"optimizer class.*received 'adam'.*introspect\(optimizer\)"
    ):
        introspect_opt.introspectable("adam")
    with pytest.raises(TypeError, match=r"abstract base class keras.optimizers.Optimizer"):
        introspect_opt.introspectable(keras.optimizers.Optimizer)
    with pytest.raises(TypeError, match=r"subclass of keras.optimizers.Optimizer.*builtins.dict"):
        introspect_opt.introspectable(dict)
    with pytest.raises(TypeError, match=r"wrapper LossScaleOptimizer.*IntrospectableAdam"):
        introspect_opt.introspectable(keras.optimizers.LossScaleOptimizer)
    with pytest.raises(
        TypeError, match=r"optimizer instance.*a class: use introspect_opt\.introspectable"
    ):
        introspect_opt.introspect(keras.optimizers.Adam)
    wrapped = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
    with pytest.raises(TypeError, match=r"introspect\(optimizer\.inner_optimizer\)"):
        introspect_opt.introspect(wrapped)
    with pytest.raises(TypeError, match=r"received None"):
        introspect_opt.introspect(None)


def test_constructor_errors_are_kerass_own() -> None:
    """Arguments Keras rejects raise Keras's error, unchanged."""
    with pytest.raises(ValueError) as plain:
        keras.optimizers.SGD(momentum=2.0)
    with pytest.raises(ValueError) as ours:
        introspect_opt.IntrospectableSGD(momentum=2.0)
    assert str(ours.value) == str(plain.value)
    with pytest.raises(ValueError, match="Argument\\(s\\) not recognized"):
        introspect_opt.IntrospectableAdam(learning_rat=0.1)


def test_set_weights_from_another_optimizers_variables_copies_every_one() -> None:
    """``b.set_weights(a.variables)`` makes every variable ``a`` lists equal in ``b``."""
    x = keras.Variable(np.ones((2, 2), "float32"))
    a = introspect_opt.IntrospectableAdam(0.1)
    a.apply_gradients([(keras.ops.ones((2, 2)), x)])
    a.learning_rate = 0.5  # the next update's rate now differs from the applied one
    b = introspect_opt.IntrospectableAdam(0.1)
    b.build([x])
    b.set_weights(a.variables)
    assert len(b.variables) == len(a.variables)
    for mine, theirs in zip(b.variables, a.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    # On JAX `variables` lists the cached rate, so b holds a's applied rate;
    # elsewhere it is not listed and b derives it from its rate variable.
    expected = 0.1 if keras.backend.backend() == "jax" else 0.5
    assert float(b.current_learning_rate) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"not compatible with provided weight shape \(3,\)"):
        b.set_weights([*a.variables[:-1], np.zeros(3, "float32")])
