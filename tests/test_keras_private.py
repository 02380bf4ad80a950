"""Canaries: each fails loudly, naming the versions, when Keras or TensorFlow changes an internal.

Every public name of ``introspect_opt._keras3.compat`` stands for one private
Keras or TensorFlow name (or a structure they do not document). Each test
marked ``canary`` exercises exactly the names its ``@canary(...)`` lists
against the installed Keras, in a second or less, and on failure names the
Keras (and TensorFlow) version, the private name and the compat name to
update. ``pytest -m canary`` runs them alone (docs/compat.md, "Trying a newer
Keras"); ``test_every_compat_name_has_a_canary`` fails when a compat name has
none, and two guards fail when package code touches a private name outside
the compat modules.
"""

from __future__ import annotations

import ast
import copy
import functools
import gc
import importlib
import inspect
import pathlib
import pickle
import pkgutil
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
from helpers import KERAS_OPTIMIZERS, SCHEDULE, make_model

import introspect_opt
from introspect_opt import IntrospectableSGD, introspect
from introspect_opt._keras3 import compat

BACKEND = keras.backend.backend()

# compat name -> [(canary test, the private Keras/TensorFlow thing it checks)].
CANARIES: dict[str, list[tuple[str, str]]] = {}


def versions() -> str:
    """The installed Keras (and TensorFlow, when loaded), as failure messages name them."""
    text = f"Keras {keras.__version__}"
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        text += f" with TensorFlow {tf.__version__}"
    return f"{text} ({BACKEND} backend)"


def canary(**touches: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Marks a test as the canary of the compat names given, each with the private thing it wraps.

    A failure (an assertion, or any error the private name raises) becomes
    one that names the versions, each private thing, and the compat name
    that needs updating.
    """

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        for name, what in touches.items():
            CANARIES.setdefault(name, []).append((test.__name__, what))

        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            try:
                test(*args, **kwargs)
            except Exception as error:
                changed = "; ".join(
                    f"{what} (introspect_opt._keras3.compat.{name})"
                    for name, what in touches.items()
                )
                pytest.fail(
                    f"{versions()}: one of these changed or is gone: {changed}. Update those "
                    "names of introspect_opt/_keras3/compat.py (see docs/compat.md).\n"
                    f"{type(error).__name__}: {error}"
                )

        return pytest.mark.canary(run)  # type: ignore[no-any-return]

    return decorate


def test_a_failing_canary_names_the_versions_and_what_to_update() -> None:
    """A canary's failure names Keras's version, the private name and the compat name."""

    def renamed() -> None:  # as if Keras had renamed `_iterations`
        compat.raw_step_counter(object())

    broken = canary(raw_step_counter="BaseOptimizer._iterations")(renamed)
    CANARIES["raw_step_counter"].pop()  # not a real canary
    assert [mark.name for mark in broken.pytestmark] == ["canary"]  # type: ignore[attr-defined]
    with pytest.raises(pytest.fail.Exception) as failure:
        broken()
    message = str(failure.value)
    assert message.startswith(f"Keras {keras.__version__}"), message
    assert "BaseOptimizer._iterations (introspect_opt._keras3.compat.raw_step_counter)" in message
    assert "AttributeError: 'object' object has no attribute '_iterations'" in message


# --- the optimizer -------------------------------------------------------------


@canary(
    UPDATE_STEP_HOOK="keras.optimizers.Optimizer._backend_update_step("
    "grads, trainable_variables, learning_rate)"
)
def test_update_step_hook_exists_with_the_expected_signature() -> None:
    """Keras still routes applied updates through _backend_update_step."""
    hook = getattr(keras.optimizers.Optimizer, compat.UPDATE_STEP_HOOK)
    assert list(inspect.signature(hook).parameters) == [
        "self",
        "grads",
        "trainable_variables",
        "learning_rate",
    ]


@canary(
    UPDATE_STEP_HOOK="Optimizer._backend_update_step, called once per applied update "
    "(every micro-step on JAX)"
)
def test_hook_runs_once_per_applied_update_only() -> None:
    """Called once per real update, never on accumulation micro-steps (but JAX).

    On JAX, Keras runs it on every micro-step and then reverts everything in
    optimizer.variables on the steps that are not updates; that is why the
    cache is listed there on that backend.
    """
    calls: list[float] = []

    def counting(self: Any, grads: Any, trainable_variables: Any, learning_rate: Any) -> None:
        calls.append(float(learning_rate))
        getattr(keras.optimizers.SGD, compat.UPDATE_STEP_HOOK)(
            self, grads, trainable_variables, learning_rate
        )

    counting_class = type("Counting", (keras.optimizers.SGD,), {compat.UPDATE_STEP_HOOK: counting})
    optimizer = counting_class(SCHEDULE, gradient_accumulation_steps=2)
    w = keras.Variable([1.0, 2.0])
    for _ in range(6):
        optimizer.apply_gradients([(keras.ops.ones((2,)), w)])
    assert len(calls) == (6 if BACKEND == "jax" else 3), calls


@canary(
    WEIGHT_DECAY_HOOK="BaseOptimizer._apply_weight_decay(variables), called right before "
    "_backend_update_step with the same variables, in the same branch"
)
def test_weight_decay_runs_right_before_the_update_step_with_the_same_variables() -> None:
    """Keras decays exactly the variables it then updates, just before updating them.

    While diagnostics watch each variable, the mixin defers the decay and
    applies it one variable at a time, right before that variable's update
    step: that is only the same update if Keras pairs the two calls so.
    """
    events: list[tuple[str, list[int]]] = []
    base = keras.optimizers.AdamW

    def decay(self: Any, variables: Any) -> None:
        events.append(("decay", [id(v) for v in variables]))
        getattr(base, compat.WEIGHT_DECAY_HOOK)(self, variables)

    def update(self: Any, grads: Any, trainable_variables: Any, learning_rate: Any) -> None:
        events.append(("update", [id(v) for v in trainable_variables]))
        getattr(base, compat.UPDATE_STEP_HOOK)(self, grads, trainable_variables, learning_rate)

    spy = type("Spy", (base,), {compat.WEIGHT_DECAY_HOOK: decay, compat.UPDATE_STEP_HOOK: update})
    assert list(inspect.signature(getattr(base, compat.WEIGHT_DECAY_HOOK)).parameters) == [
        "self",
        "variables",
    ]
    optimizer = spy(0.1, weight_decay=0.5)
    w, b = keras.Variable([1.0, 2.0]), keras.Variable([3.0])
    optimizer.apply_gradients([(keras.ops.ones((2,)), w), (keras.ops.ones((1,)), b)])
    assert events == [("decay", [id(w), id(b)]), ("update", [id(w), id(b)])], events


@canary(
    decays="BaseOptimizer._use_weight_decay(variable) (exclude_from_weight_decay), "
    "weight_decay=None, and Muon's _should_use_adamw / adam_weight_decay",
)
def test_decays_follows_what_each_keras_decay_changes() -> None:
    """Keras's per-variable tests of whether decoupled weight decay changes a variable.

    Checked against what the decay really does: each case decays a variable
    of ones once (Keras's own ``_apply_weight_decay``) and looks whether it moved.
    """

    def moved(optimizer: Any, variable: Any) -> bool:
        before = keras.ops.convert_to_numpy(variable).copy()
        try:
            getattr(optimizer, compat.WEIGHT_DECAY_HOOK)([variable])
        except RuntimeError as error:  # torch's decay of nothing: an empty _foreach list
            if BACKEND != "torch" or "at least one tensor" not in str(error):
                raise
        return not np.array_equal(keras.ops.convert_to_numpy(variable), before)

    cases = []
    adamw = keras.optimizers.AdamW(0.1, weight_decay=0.5)
    adamw.exclude_from_weight_decay(var_names=["bias"])
    cases.append((adamw, keras.Variable(np.ones((2, 2)), name="kernel"), True))
    cases.append((adamw, keras.Variable(np.ones((2,)), name="bias"), False))
    cases.append((keras.optimizers.Adam(0.1), keras.Variable(np.ones((2, 2)), name="k"), False))
    for wd, adam_wd in ((None, 0.5), (0.5, None)):
        muon = keras.optimizers.Muon(0.1, weight_decay=wd, adam_weight_decay=adam_wd)
        cases.append((muon, keras.Variable(np.ones((2, 2)), name="kernel"), wd is not None))
        cases.append((muon, keras.Variable(np.ones((2,)), name="bias"), adam_wd is not None))
    for optimizer, variable, expected in cases:
        optimizer.build([variable])
        assert compat.decays(optimizer, variable) == expected, (optimizer, variable.path)
        assert moved(optimizer, variable) == expected, (optimizer, variable.path)


@canary(WEIGHT_DECAY_CLASSES="the Keras classes that define _apply_weight_decay")
def test_only_the_known_keras_classes_define_their_own_weight_decay() -> None:
    """``decays`` follows every Keras class with a decay of its own: no other has one.

    Every class ``keras.optimizers`` exports, as this backend instantiates it.
    """
    found = set()
    for value in vars(keras.optimizers).values():
        if not isinstance(value, type) or not issubclass(value, keras.optimizers.Optimizer):
            continue
        for klass in compat.backend_class(value).__mro__:  # the class Keras instantiates
            if compat.WEIGHT_DECAY_HOOK in vars(klass):
                found.add(f"{klass.__module__}.{klass.__qualname__}")
    assert found <= compat.WEIGHT_DECAY_CLASSES, found
    assert "keras.src.optimizers.muon.Muon" in found


@canary(
    ASSIGNMENT_HOOKS="BaseOptimizer.assign/assign_add/assign_sub: every Keras update step "
    "changes a variable only through them",
    update_step_is_keras_own="Keras optimizers' update_step and _backend_update_step",
)
@pytest.mark.parametrize("name", KERAS_OPTIMIZERS)
def test_keras_update_steps_change_a_variable_only_through_the_assignment_methods(
    name: str,
) -> None:
    """The change each Keras class's update makes is the sum of what it assigns.

    A spy below our classes' place records every ``assign``/``assign_add``/
    ``assign_sub`` of the model variable (found by Keras's own key: on
    TensorFlow the update step is handed the variable's ``tf.Variable``);
    after two updates (momentum and slots non-zero), the variable moved by
    exactly what was recorded. Not on
    torch, whose fused update steps write through ``torch._foreach`` (the
    mixin never uses the assignments there).
    """
    if BACKEND == "torch":
        pytest.skip("torch's fused update steps bypass the assignments; not used there")
    base = getattr(keras.optimizers, name)
    records: list[tuple[str, Any]] = []
    watched: list[Any] = []

    def spy(kind: str) -> Any:
        def method(self: Any, variable: Any, value: Any) -> None:
            if compat.variable_key(self, variable) == compat.variable_key(self, watched[0]):
                old = keras.ops.convert_to_numpy(variable).copy()
                records.append((kind, old, np.asarray(keras.ops.convert_to_numpy(value))))
            getattr(base, kind)(self, variable, value)

        return method

    spied = type("Spy", (base,), {kind: spy(kind) for kind in compat.ASSIGNMENT_HOOKS})
    optimizer = spied(0.1)
    variable = keras.Variable(np.linspace(-1.0, 1.0, 12).reshape(4, 3).astype("float32"))
    optimizer.exclude_from_weight_decay(var_list=[variable])  # the decay is not assigned
    watched.append(variable)
    for step in range(2):
        records.clear()
        before = keras.ops.convert_to_numpy(variable).astype("float64")
        gradient = np.linspace(0.5, -0.7, 12).reshape(4, 3).astype("float32") * (step + 1)
        optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
        after = keras.ops.convert_to_numpy(variable).astype("float64")
        assert records, f"{name} changed the variable without the assignment methods"
        change = np.zeros_like(before)
        for kind, old, value in records:
            if kind == "assign":
                change += value.astype("float64") - old
            else:
                change += (1 if kind == "assign_add" else -1) * value.astype("float64")
        np.testing.assert_allclose(after - before, change, rtol=1e-5, atol=1e-6, err_msg=name)
    ours = getattr(introspect_opt, f"Introspectable{name}")
    assert compat.update_step_is_keras_own(ours, introspect_opt.IntrospectableOptimizer)


@canary(
    fused_step_skips_user_methods="keras.src.backend.torch.optimizers.* (_parallel_update_step "
    "with torch._foreach) and TorchOptimizer.__new__ (fused classes for Keras's exact classes)",
    generic_update_step="BaseOptimizer._backend_update_step (update_step per variable)",
)
def test_a_users_update_step_needs_the_generic_step_only_below_a_fused_class() -> None:
    """Only on torch, only for a subclass of ours that defines its own update_step.

    Keras's generic step calls ``update_step`` once per variable, in order
    (on TensorFlow it hands it each variable's ``tf.Variable``: compared by
    Keras's key).
    """
    ours = introspect_opt.IntrospectableOptimizer
    seen: list[Any] = []

    def update_step(self: Any, gradient: Any, variable: Any, learning_rate: Any) -> None:
        seen.append(compat.variable_key(self, variable))

    mine = type("Mine", (introspect_opt.IntrospectableAdam,), {"update_step": update_step})
    assert compat.fused_step_skips_user_methods(mine, ours) == (BACKEND == "torch")
    assert not compat.fused_step_skips_user_methods(introspect_opt.IntrospectableAdam, ours)
    plain_subclass = type("Plain", (keras.optimizers.Adam,), {"update_step": update_step})
    assert type(plain_subclass(0.1)) is plain_subclass  # Keras keeps a subclass unfused
    optimizer = mine(0.1)
    variables = [keras.Variable([1.0]), keras.Variable([2.0])]
    optimizer.build(variables)
    compat.generic_update_step(optimizer, [keras.ops.ones((1,))] * 2, variables, 0.1)
    assert seen == [compat.variable_key(optimizer, v) for v in variables]


@canary(variable_key="BaseOptimizer._var_key(variable)")
def test_variable_key_tells_variables_apart() -> None:
    """Keras's key of a variable: the same for it, another for another variable."""
    optimizer = keras.optimizers.SGD(0.1)
    a, b = keras.Variable([1.0]), keras.Variable([2.0])
    optimizer.build([a, b])
    assert compat.variable_key(optimizer, a) == compat.variable_key(optimizer, a)
    assert compat.variable_key(optimizer, a) != compat.variable_key(optimizer, b)


@canary(
    variable_index="BaseOptimizer._get_variable_index(variable)",
    rate_variable="BaseOptimizer._learning_rate (a keras.Variable for a float rate)",
)
def test_variable_index_and_rate_variable() -> None:
    """Keras finds a variable's position among those it was built for; a float rate is one."""
    optimizer = keras.optimizers.SGD(0.25)
    variables = [keras.Variable([1.0]), keras.Variable([2.0, 3.0])]
    optimizer.build(variables)
    assert [compat.variable_index(optimizer, v) for v in reversed(variables)] == [1, 0]
    rate = compat.rate_variable(optimizer)
    assert isinstance(rate, keras.Variable) and any(v is rate for v in optimizer.variables)
    assert compat.rate_variable(keras.optimizers.SGD(SCHEDULE)) is None


@canary(
    raw_step_counter="BaseOptimizer._iterations (the raw counter, micro-steps included)",
    learning_rate_at="BaseOptimizer._learning_rate and keras.src.optimizers.schedules."
    "learning_rate_schedule.LearningRateSchedule (as _get_current_learning_rate reads them)",
    learning_rate_source="BaseOptimizer._learning_rate (the schedule, callable or variable)",
    has_rate_variable="BaseOptimizer._learning_rate (a keras.Variable for a float rate)",
)
def test_raw_counter_and_rate_at_step() -> None:
    """The raw counter counts micro-steps; learning_rate_at matches learning_rate."""
    optimizer = keras.optimizers.SGD(SCHEDULE, gradient_accumulation_steps=3)
    w = keras.Variable([1.0])
    for _ in range(4):
        optimizer.apply_gradients([(keras.ops.ones((1,)), w)])
    counter = compat.raw_step_counter(optimizer)
    assert int(counter) == 4 and int(optimizer.iterations) == 1
    assert float(compat.learning_rate_at(optimizer, counter)) == float(optimizer.learning_rate)
    assert compat.learning_rate_source(optimizer) is SCHEDULE
    assert not compat.has_rate_variable(optimizer)
    floating = keras.optimizers.SGD(0.25)
    assert float(compat.learning_rate_at(floating, 7)) == 0.25
    assert compat.has_rate_variable(floating)
    assert any(v is compat.learning_rate_source(floating) for v in floating.variables)
    assert float(compat.learning_rate_at(keras.optimizers.SGD(lambda: 0.5), 3)) == 0.5


@canary(variables_built_for="BaseOptimizer._trainable_variables (what build() was given)")
def test_an_optimizer_keeps_the_variables_it_was_built_for() -> None:
    """``_trainable_variables`` lists the build's variables, in order; apply(grads) uses them."""
    optimizer = keras.optimizers.SGD(0.5)
    variables = [keras.Variable([1.0]), keras.Variable([2.0, 3.0])]
    optimizer.build(variables)
    assert [id(v) for v in compat.variables_built_for(optimizer)] == [id(v) for v in variables]
    optimizer.apply([keras.ops.ones((1,)), keras.ops.ones((2,))])  # no variables given
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variables[1]), [1.5, 2.5])


@canary(
    backend_class="keras.src.backend.torch.optimizers.TorchOptimizer.__new__ "
    "(the fused class it swaps in on torch)",
    public_class="the keras.src.backend.* module of that variant",
)
def test_backend_class_is_what_keras_instantiates() -> None:
    """Keras instantiates ``backend_class(cls)``; ``public_class`` maps it back."""
    for name in ("SGD", "Adam"):
        exported = getattr(keras.optimizers, name)
        real = compat.backend_class(exported)
        assert type(exported(0.1)) is real
        assert issubclass(real, exported)
        assert compat.public_class(real) is exported
        assert (real is exported) == (BACKEND != "torch"), real


@canary(
    default_name="keras.src.utils.naming.auto_name (Keras's numbered default names)",
    unnumbered_default_name="keras.src.utils.naming.to_snake_case",
)
def test_default_names_are_the_ones_keras_gives() -> None:
    """An unnamed optimizer is named as ``default_name`` says, from one counter."""
    keras.backend.clear_session(free_memory=False)
    assert compat.default_name(keras.optimizers.SGD) == "sgd"
    assert keras.optimizers.SGD(0.1).name == "sgd_1"
    assert compat.default_name(keras.optimizers.SGD) == "sgd_2"
    assert compat.unnumbered_default_name(keras.optimizers.SGD) == "sgd"
    wrapper = keras.optimizers.LossScaleOptimizer
    assert compat.unnumbered_default_name(wrapper) == "loss_scale_optimizer"
    assert wrapper(keras.optimizers.SGD(0.1)).name.startswith("loss_scale_optimizer")


@canary(
    unpickle="keras.src.saving.keras_saveable.KerasSaveable.__reduce__ / _unpickle_model",
)
def test_pickle_goes_through_unpickle_model() -> None:
    """``KerasSaveable.__reduce__`` is ``(cls._unpickle_model, args)``; ``unpickle`` rebuilds."""
    optimizer = keras.optimizers.SGD(0.25, momentum=0.5, name="pickled")
    function, args = optimizer.__reduce__()[:2]
    assert function == type(optimizer)._unpickle_model
    again = compat.unpickle(type(optimizer), *args)
    assert type(again) is type(optimizer)
    assert again.get_config() == optimizer.get_config()
    assert pickle.loads(pickle.dumps(optimizer)).get_config() == optimizer.get_config()


@canary(sync_training_state="keras.src.backend.jax.trainer.JAXTrainer.jax_state_sync")
def test_training_state_sync_exists_on_jax_only() -> None:
    """JAX models have ``jax_state_sync``; elsewhere there is nothing to sync."""
    model = make_model()
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    assert hasattr(model, "jax_state_sync") == (BACKEND == "jax")
    compat.sync_training_state(model)


@canary(
    is_traced="tf.executing_eagerly / jax.core.Tracer (what a traced value is)",
    eager_scope="tf.init_scope (leaves a function being traced)",
)
def test_traced_values_and_the_eager_scope() -> None:
    """``is_traced`` tells tracing from eager code; ``eager_scope`` runs eagerly inside it."""
    assert not compat.is_traced(keras.ops.ones(()))
    seen: list[tuple[bool, bool]] = []

    def step(x: Any) -> Any:
        with compat.eager_scope():
            inner = compat.is_traced(keras.ops.ones(()))
        seen.append((compat.is_traced(x), inner))
        return x + 1

    if BACKEND == "tensorflow":
        import tensorflow as tf

        tf.function(step)(tf.constant(1.0))
        assert seen == [(True, False)]
    elif BACKEND == "jax":
        import jax

        jax.jit(step)(1.0)
        assert seen == [(True, True)]  # eager_scope leaves TensorFlow functions only
    else:  # torch: nothing is traced the way these mean
        step(keras.ops.ones(()))
        assert seen == [(False, False)]


@canary(
    foreign_strategy="keras.src.backend.tensorflow.optimizer.TFOptimizer._distribution_strategy",
    strategy_scope="TFOptimizer._distribution_strategy (the strategy it was created under)",
)
def test_an_optimizer_remembers_its_strategy() -> None:
    """TensorFlow optimizers record the strategy they were created under; others have none."""
    outside = keras.optimizers.SGD(0.1)
    if BACKEND != "tensorflow":
        assert not hasattr(outside, "_distribution_strategy")
        assert compat.foreign_strategy(outside) is None
        with compat.strategy_scope(outside):
            pass
        return
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        inside = keras.optimizers.SGD(0.1)
        assert compat.foreign_strategy(outside) is strategy
        assert compat.foreign_strategy(inside) is None
    with compat.strategy_scope(inside):
        assert tf.distribute.get_strategy() is strategy
    with compat.strategy_scope(outside):
        assert tf.distribute.get_strategy() is not strategy


# --- .keras / .weights.h5 files -------------------------------------------------


@canary(
    read_child_group="keras.src.saving.saving_lib.H5IOStore.get(path) (points the store)",
    store_entry_path="keras.src.saving.saving_lib.H5IOStore._h5_entry_path",
    point_store="keras.src.saving.saving_lib.H5IOStore.get(path)",
)
def test_keras_hands_the_optimizer_a_store_that_reaches_the_state_group(tmp_path: Path) -> None:
    """The store handed to load_own_variables can be pointed at the state's group and back."""
    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.save_weights(tmp_path / "m.weights.h5")
    from keras.src.saving import saving_lib

    store = saving_lib.H5IOStore(tmp_path / "m.weights.h5", mode="r")
    try:
        store.get("optimizer")
        assert compat.store_entry_path(store) == "optimizer"
        group = compat.read_child_group(store, "_introspection_state")
        assert sorted(group) == ["applied_learning_rate", "manifest", "update_count"]
        assert compat.store_entry_path(store) == "optimizer"  # pointed back
        assert len(store.keys()) == len(model.optimizer._plain_variables())
        compat.point_store(store, "optimizer", "_introspection_state")
        assert compat.store_entry_path(store) == "optimizer/_introspection_state"
        assert sorted(store.keys()) == sorted(group)
        compat.point_store(store, "optimizer")
        assert len(store.keys()) == len(model.optimizer._plain_variables())
    finally:
        store.close()


@canary(
    describe_store="keras.src.saving.saving_lib.H5IOStore.path_or_io / .archive / "
    "._h5_entry_path (which file, which group)",
)
def test_a_store_names_its_file_and_group(tmp_path: Path) -> None:
    """The store Keras hands ``load_own_variables`` tells which file and group it reads."""
    seen: list[str] = []

    class Probe(keras.optimizers.SGD):
        def load_own_variables(self, store: Any) -> None:
            seen.append(compat.describe_store(store))
            super().load_own_variables(store)

    model = make_model()
    model.compile(Probe(0.1), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.save_weights(tmp_path / "m.weights.h5")
    model.save(tmp_path / "m.keras")
    model.load_weights(tmp_path / "m.weights.h5")
    keras.saving.load_model(tmp_path / "m.keras", custom_objects={"Probe": Probe})
    assert seen == [
        f"{tmp_path / 'm.weights.h5'}, group 'optimizer'",
        "the .keras file being loaded (its model.weights.h5), group 'optimizer'",
    ]


@canary(
    KerasSaveable="keras.src.saving.keras_saveable.KerasSaveable (what saving_lib walks into)",
    SAVEABLE_TYPE_HOOK="KerasSaveable._obj_type (selects saving_lib's attribute skip-set)",
)
def test_saving_walks_the_state_into_a_group_of_its_own(tmp_path: Path) -> None:
    """Keras's saving walk still visits KerasSaveable attributes of an optimizer."""
    assert compat.SAVEABLE_TYPE_HOOK in vars(compat.KerasSaveable)
    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    state = model.optimizer._introspection_state
    assert isinstance(state, compat.KerasSaveable)
    assert getattr(state, compat.SAVEABLE_TYPE_HOOK)() == "Optimizer"
    model.optimizer.apply_gradients(
        [(keras.ops.ones(v.shape), v) for v in model.trainable_variables]
    )
    model.save_weights(tmp_path / "m.weights.h5")
    with h5py.File(tmp_path / "m.weights.h5", "r") as f:
        group = f["optimizer/_introspection_state/vars"]
        assert sorted(group.keys()) == ["applied_learning_rate", "manifest", "update_count"]
        assert np.asarray(group["update_count"]) == 1
        assert len(f["optimizer/vars"].keys()) == len(model.optimizer._plain_variables())


# --- LossScaleOptimizer ---------------------------------------------------------


@canary(
    WRAPPER_CLASS="keras.optimizers.LossScaleOptimizer",
    WRAPPER_LOAD="LossScaleOptimizer.load_own_variables (inherited, by position, own then "
    "wrapped variables)",
    WRAPPED_CHILD="LossScaleOptimizer.inner_optimizer (its group in files)",
    WRAPPER_VARIABLES_BEFORE_BUILD="LossScaleOptimizer's variables before build (2)",
    LOSS_SCALE_VARIABLE="LossScaleOptimizer's 'dynamic_scale' variable",
    wrapper_own_variables="LossScaleOptimizer._variables (its own, not the wrapped ones)",
    wrapper_variables="LossScaleOptimizer.variables (its own, then the wrapped optimizer's)",
)
def test_loss_scale_optimizer_loads_the_wrapped_variables_by_position_first(
    tmp_path: Path,
) -> None:
    """Its inherited load assigns its own variables, then the wrapped ones, from its group.

    That is why the wrapped optimizer checks the file before the wrapper's
    load; the wrapped group must sit under ``inner_optimizer``.
    """
    wrapper_class = compat.WRAPPER_CLASS
    assert wrapper_class is keras.optimizers.LossScaleOptimizer
    assert compat.WRAPPER_LOAD not in vars(wrapper_class)  # BaseOptimizer's
    load = getattr(wrapper_class, compat.WRAPPER_LOAD)
    source = inspect.getsource(load)
    assert source.index("self.variables") < source.index(".assign(")
    assert list(inspect.signature(load).parameters) == ["self", "store"]
    model = make_model()
    wrapped = IntrospectableSGD(SCHEDULE, momentum=0.9)
    model.compile(keras.optimizers.LossScaleOptimizer(wrapped), loss="mse")
    before_build = compat.wrapper_own_variables(model.optimizer)
    assert len(before_build) == compat.WRAPPER_VARIABLES_BEFORE_BUILD
    model.optimizer.build(model.trainable_variables)
    wrapper = model.optimizer
    names = [v.name for v in compat.wrapper_own_variables(wrapper)]
    assert compat.LOSS_SCALE_VARIABLE in names, names
    assert [id(v) for v in wrapper.variables] == [id(v) for v in compat.wrapper_variables(wrapper)]
    model.save_weights(tmp_path / "m.weights.h5")
    with h5py.File(tmp_path / "m.weights.h5") as f:
        assert f"optimizer/{compat.WRAPPED_CHILD}/vars" in f
        assert len(f["optimizer/vars"]) == len(wrapper.variables)


@canary(
    WRAPPING_SIGNAL="LossScaleOptimizer.__init__: inner_optimizer stored, then the wrapped "
    "loss_scale_factor set to None",
)
def test_loss_scale_optimizer_signals_the_optimizer_it_wraps_once_it_holds_it() -> None:
    """Its constructor sets the wrapped ``loss_scale_factor`` to None after storing it.

    The wrapped optimizer finds its new wrapper at that moment: the wrapper
    must already hold it as ``inner_optimizer``.
    """
    seen: list[tuple[object, bool]] = []

    class Probe(keras.optimizers.SGD):
        def __setattr__(self, name, value):  # type: ignore[no-untyped-def]
            super().__setattr__(name, value)
            if name == compat.WRAPPING_SIGNAL and "_probe_ready" in vars(self):
                held = [
                    o
                    for o in gc.get_objects(0) + gc.get_objects(1) + gc.get_objects(2)
                    if type(o) is compat.WRAPPER_CLASS and vars(o).get(compat.WRAPPED_CHILD) is self
                ]
                seen.append((value, len(held) == 1))

    inner = Probe(0.1, loss_scale_factor=128.0)
    inner.__dict__["_probe_ready"] = True
    wrapper = keras.optimizers.LossScaleOptimizer(inner)
    assert seen == [(None, True)], seen
    assert inner.loss_scale_factor is None
    assert getattr(wrapper, compat.WRAPPED_CHILD) is inner


@canary(
    WRAPPER_LOAD="saving_lib._load_state calls load_own_variables looked up on the instance, "
    "the wrapper's before the wrapped optimizer's",
)
def test_keras_loading_calls_load_own_variables_found_on_the_instance(tmp_path: Path) -> None:
    """``saving_lib._load_state`` calls the wrapper's own attribute, then the wrapped load."""
    keras.config.set_dtype_policy("mixed_float16")
    model = make_model()
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.save_weights(tmp_path / "m.weights.h5")
    wrapper = model.optimizer
    calls: list[str] = []
    inner_load = wrapper.inner_optimizer.load_own_variables

    def instance_load(store):  # type: ignore[no-untyped-def]
        calls.append(f"wrapper {compat.store_entry_path(store)}")
        type(wrapper).load_own_variables(wrapper, store)

    def wrapped_load(store):  # type: ignore[no-untyped-def]
        calls.append(f"wrapped {compat.store_entry_path(store)}")
        inner_load(store)

    vars(wrapper)[compat.WRAPPER_LOAD] = instance_load
    vars(wrapper.inner_optimizer)["load_own_variables"] = wrapped_load
    model.load_weights(tmp_path / "m.weights.h5")
    assert calls == ["wrapper optimizer", f"wrapped optimizer/{compat.WRAPPED_CHILD}"]


def _hook_of(wrapper: Any) -> Any:
    hook = vars(wrapper).get(compat.WRAPPER_LOAD)
    assert isinstance(hook, compat.CheckedWrapperLoad), hook
    assert hook.wraps(wrapper.inner_optimizer)
    return hook


@canary(
    hook_wrapper_loads="LossScaleOptimizer instances on the heap, holding inner_optimizer "
    "in their __dict__",
    CheckedWrapperLoad="a LossScaleOptimizer's load_own_variables replaced on the instance",
)
def test_every_wrapper_of_an_introspectable_optimizer_checks_before_it_loads(
    tmp_path: Path,
) -> None:
    """Wrapped by compile, by hand (built before), by load_model, or before introspect()."""
    keras.config.set_dtype_policy("mixed_float16")
    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    assert isinstance(vars(model.optimizer)[compat.WRAPPER_LOAD], compat.CheckedWrapperLoad)
    _hook_of(model.optimizer)
    built = IntrospectableSGD(0.1)
    built.build(model.trainable_variables)
    _hook_of(keras.optimizers.LossScaleOptimizer(built))
    model.save(tmp_path / "m.keras")
    _hook_of(keras.saving.load_model(tmp_path / "m.keras").optimizer)
    plain = keras.optimizers.SGD(0.1)
    wrapper = keras.optimizers.LossScaleOptimizer(plain)
    assert compat.WRAPPER_LOAD not in vars(wrapper)
    introspect(plain)
    _hook_of(wrapper)
    assert compat.hook_wrapper_loads(plain) == 0  # hooked once
    # Not a wrapper of it: nothing is hooked.
    assert compat.hook_wrapper_loads(IntrospectableSGD(0.1)) == 0


@canary(
    CheckedWrapperLoad="KerasSaveable.__reduce__ / copy through get_config (the hook is "
    "never copied, pickled or checkpointed)",
)
def test_the_load_check_is_never_persisted_or_shared(tmp_path: Path) -> None:
    """Config, pickle, deepcopy and tf.train.Checkpoint see a plain LossScaleOptimizer."""
    inner = IntrospectableSGD(0.1, name="sgd")
    wrapper = keras.optimizers.LossScaleOptimizer(inner, name="wrapper")
    hook = _hook_of(wrapper)
    assert isinstance(hook, compat.CheckedWrapperLoad)
    unhooked = keras.optimizers.LossScaleOptimizer(
        IntrospectableSGD(0.1, name="sgd"), name="wrapper"
    )
    del unhooked.__dict__[compat.WRAPPER_LOAD]
    assert wrapper.get_config() == unhooked.get_config()
    for copied in (copy.deepcopy(wrapper), copy.copy(wrapper), pickle.loads(pickle.dumps(wrapper))):
        assert _hook_of(copied) is not hook  # its own, for its own wrapped optimizer
        assert copied.inner_optimizer is not inner
    with pytest.raises(TypeError, match="copy or pickle the LossScaleOptimizer"):
        copy.deepcopy(hook)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        model = make_model()
        model.compile(wrapper, loss="mse")
        wrapper.build(model.trainable_variables)
        path = tf.train.Checkpoint(optimizer=wrapper).write(str(tmp_path / "ck"))
        names = [name for name, _ in tf.train.list_variables(path)]
        assert not [n for n in names if compat.WRAPPER_LOAD in n], names
        fresh = keras.optimizers.LossScaleOptimizer(IntrospectableSGD(0.1))
        fresh.build(model.trainable_variables)
        tf.train.Checkpoint(optimizer=fresh).read(path).assert_consumed()


def test_the_hook_checks_the_file_before_the_wrapper_assigns_anything(tmp_path: Path) -> None:
    """A damaged loss scale raises before the wrapper's load, also for an introspect()ed one."""
    keras.config.set_dtype_policy("mixed_float16")
    for make in (lambda: IntrospectableSGD(0.1), lambda: keras.optimizers.SGD(0.1)):
        model = make_model()
        inner = make()
        model.compile(inner, loss="mse")
        if not isinstance(inner, IntrospectableSGD):
            introspect(inner)
        model.optimizer.build(model.trainable_variables)
        model.save_weights(tmp_path / "m.weights.h5")
        with h5py.File(tmp_path / "m.weights.h5", "a") as f:
            group = f["optimizer/vars"]
            index = next(
                i
                for i, v in enumerate(compat.wrapper_own_variables(model.optimizer))
                if v.name == compat.LOSS_SCALE_VARIABLE
            )
            del group[str(index)]
            group[str(index)] = np.float32(0.0)
            del group["0"]
            group["0"] = np.asarray(7, "int64")  # the wrapper's iterations: would change
        before = [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables]
        with pytest.raises(ValueError, match="loss scale"):
            model.load_weights(tmp_path / "m.weights.h5")
        after = [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables]
        assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


# --- tf.train.Checkpoint (TensorFlow's Trackable protocol) ----------------------


@pytest.mark.tf_only
@canary(
    TF_CHILDREN_HOOK="tensorflow.python.trackable.base.Trackable._trackable_children "
    "(called before a restore, without arguments, and before a save)",
)
def test_tensorflow_lists_children_before_it_restores_or_saves(tmp_path: Path) -> None:
    """tf.train.Checkpoint still calls _trackable_children before restoring and saving."""
    import tensorflow as tf

    calls: list[tuple[Any, ...]] = []

    def children(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return getattr(tf.Module, compat.TF_CHILDREN_HOOK)(self, *args, **kwargs)

    probe_class = type("Probe", (tf.Module,), {compat.TF_CHILDREN_HOOK: children})
    probe = probe_class()
    probe.v = tf.Variable(1.0)
    path = tf.train.Checkpoint(probe=probe).write(str(tmp_path / "ck"))
    assert calls and all(args for args in calls), calls  # saving: the save type
    calls.clear()
    tf.train.Checkpoint(probe=probe_class()).read(path)
    assert () in calls, calls  # restoring: no arguments


@pytest.mark.tf_only
@canary(
    TF_LOOKUP_HOOK="Trackable._lookup_dependency(name, cached_dependencies)",
    is_restore_lookup="_lookup_dependency's cached_dependencies: given while restoring, "
    "None while tracking an attribute",
    checkpoint_waits_for="Trackable._deferred_dependencies (children a restore holds)",
)
def test_tensorflow_checkpoint_hooks_exist(tmp_path: Path) -> None:
    """tf.Module still asks for checkpoint children by name and keeps missing ones."""
    import tensorflow as tf

    lookups: list[tuple[str, bool]] = []

    def lookup(self: Any, name: str, cached_dependencies: Any = None) -> Any:
        lookups.append((name, compat.is_restore_lookup(cached_dependencies)))
        return getattr(tf.Module, compat.TF_LOOKUP_HOOK)(self, name, cached_dependencies)

    probe_class = type("Probe", (tf.Module,), {compat.TF_LOOKUP_HOOK: lookup})
    module = tf.Module()
    assert list(inspect.signature(getattr(module, compat.TF_LOOKUP_HOOK)).parameters) == [
        "name",
        "cached_dependencies",
    ]
    holder = probe_class()
    holder.child = tf.Module()
    holder.child.v = tf.Variable(1.0)
    assert ("child", False) in lookups, lookups  # tracking an attribute being set
    path = tf.train.Checkpoint(holder=holder).save(str(tmp_path / "ckpt"))
    lookups.clear()
    empty = probe_class()
    tf.train.Checkpoint(holder=empty).restore(path)
    assert ("child", True) in lookups, lookups  # restoring
    assert compat.checkpoint_waits_for(empty, "child")
    assert not compat.checkpoint_waits_for(empty, "other")


@pytest.mark.tf_only
@canary(
    Trackable="tf.__internal__.tracking.Trackable",
    initialize_trackable="Trackable._maybe_initialize_trackable",
    TF_SAVE_HOOK="Trackable._serialize_to_tensors",
    TF_RESTORE_HOOK="Trackable._restore_from_tensors",
    VARIABLE_ATTRIBUTE="the checkpoint attribute a variable saves its value under "
    "('VARIABLE_VALUE')",
    MANIFEST_ATTRIBUTE="a second checkpoint attribute beside it, restored by name",
)
def test_a_trackable_saves_and_restores_tensors_by_attribute(tmp_path: Path) -> None:
    """A Trackable saving ``VARIABLE_VALUE`` restores into a variable, and back into itself."""
    import tensorflow as tf

    def init(self: Any, value: Any, attribute: str) -> None:
        compat.initialize_trackable(self)
        self.value, self.attribute = value, attribute

    def save(self: Any) -> dict[str, Any]:
        return {self.attribute: tf.constant(self.value)}

    def restore(self: Any, tensors: dict[str, Any]) -> Any:
        self.value = tensors[self.attribute].numpy()
        return tf.no_op()

    box_class = type(
        "Box",
        (compat.Trackable,),
        {"__init__": init, compat.TF_SAVE_HOOK: save, compat.TF_RESTORE_HOOK: restore},
    )
    saved = box_class(np.float32(2.5), compat.VARIABLE_ATTRIBUTE)
    path = tf.train.Checkpoint(v=saved).write(str(tmp_path / "ck"))
    variable = tf.Variable(0.0)
    tf.train.Checkpoint(v=variable).read(path).assert_consumed()  # as a variable would save
    assert float(variable) == 2.5
    back = box_class(np.float32(0.0), compat.VARIABLE_ATTRIBUTE)
    tf.train.Checkpoint(v=back).read(path).assert_consumed()
    assert back.value == np.float32(2.5)
    text = box_class("{}", compat.MANIFEST_ATTRIBUTE)
    path = tf.train.Checkpoint(m=text).write(str(tmp_path / "ck2"))
    read = box_class("", compat.MANIFEST_ATTRIBUTE)
    tf.train.Checkpoint(m=read).read(path).assert_consumed()
    assert read.value == b"{}"


@pytest.mark.tf_only
@canary(
    VARIABLES_CHILD="the optimizer's checkpoint child '_variables' (slots by position)",
    waiting_checkpoint_slots="'_variables'._deferred_dependencies and "
    "CheckpointPosition.value_tensors",
    drop_waiting_checkpoint_slots="CheckpointPosition.bind_object, checkpoint.restore_uid",
)
def test_tensorflow_keeps_unbuilt_slots_by_position_with_their_values(tmp_path: Path) -> None:
    """A restore into an unbuilt optimizer leaves its slots in ``_variables``'s deferred list.

    compat.waiting_checkpoint_slots reads them there (positions, values
    through ``CheckpointPosition.value_tensors``) and drop_waiting_checkpoint_slots
    forgets them (binding holders as restored).
    """
    import tensorflow as tf

    plain = keras.optimizers.SGD(0.1, momentum=0.9)
    variable = keras.Variable(np.ones((2, 3), "float32"))
    plain.apply_gradients([(keras.ops.ones((2, 3)), variable)])
    path = tf.train.Checkpoint(optimizer=plain).write(str(tmp_path / "ck"))
    names = [name for name, _ in tf.train.list_variables(path)]
    assert f"optimizer/{compat.VARIABLES_CHILD}/2/.ATTRIBUTES/VARIABLE_VALUE" in names, names
    target = keras.optimizers.SGD(0.1, momentum=0.9)
    tf.train.Checkpoint(optimizer=target).read(path)
    waiting = compat.waiting_checkpoint_slots(target)
    assert sorted(waiting) == [2], waiting
    np.testing.assert_array_equal(waiting[2], keras.ops.convert_to_numpy(plain.variables[2]))
    compat.drop_waiting_checkpoint_slots(target)
    assert compat.waiting_checkpoint_slots(target) == {}


@pytest.mark.tf_only
@canary(
    waiting_checkpoint_values="Trackable._deferred_dependencies (name -> CheckpointPosition)",
    drop_waiting_checkpoint_values="CheckpointPosition.bind_object and "
    "Trackable._update_uid (the restore's status counts the holder)",
    rebind_checkpoint_value="CheckpointPosition.checkpoint.object_by_proto_id / "
    "all_python_objects / restore_uid",
)
def test_a_restore_keeps_missing_children_by_name_until_taken_over(tmp_path: Path) -> None:
    """Values for children that do not exist wait by name; a holder and a variable take them."""
    import tensorflow as tf

    holder = tf.Module()
    holder.v = tf.Variable(3.0)
    path = tf.train.Checkpoint(m=holder).write(str(tmp_path / "ck"))
    empty = tf.Module()
    status = tf.train.Checkpoint(m=empty).read(path)
    with pytest.raises(AssertionError):
        status.assert_consumed()  # "v" has nothing to go to yet
    assert compat.waiting_checkpoint_values(empty) == {"v": np.float32(3.0)}

    class Holder(compat.Trackable):  # type: ignore[misc]
        def __init__(self) -> None:
            compat.initialize_trackable(self)

    taken = Holder()
    compat.drop_waiting_checkpoint_values(empty, {"v": taken})
    assert compat.waiting_checkpoint_values(empty) == {}
    assert not compat.checkpoint_waits_for(empty, "v")
    status.assert_consumed()  # the holder counts as restored
    variable = tf.Variable(0.0)
    compat.rebind_checkpoint_value(taken, variable)
    for position in taken.checkpoint_positions:
        assert position.checkpoint.object_by_proto_id[position.proto_id] is variable
    status.assert_consumed()
    status.assert_existing_objects_matched()


# --- the guards ------------------------------------------------------------------


def _compat_names() -> set[str]:
    """What compat defines or re-exports (not the modules and typing helpers it imports)."""
    helpers = ("typing", "collections.abc", "__future__")
    return {
        name
        for name, value in vars(compat).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", None) not in helpers
    }


@pytest.mark.canary
def test_every_compat_name_has_a_canary() -> None:
    """Each name in compat.__all__ has a canary here that uses it; __all__ lists them all."""
    assert sorted(_compat_names()) == sorted(compat.__all__), (
        "introspect_opt/_keras3/compat.py: __all__ must list every name it defines"
    )
    missing = sorted(set(compat.__all__) - set(CANARIES))
    assert not missing, (
        f"introspect_opt._keras3.compat.{', '.join(missing)} has no canary: add a test to "
        "tests/test_keras_private.py, decorated with @canary(<name>=<the private thing>), "
        "that exercises it against the installed Keras"
    )
    assert not sorted(set(CANARIES) - set(compat.__all__))
    for name, tests in CANARIES.items():
        for test_name, _ in tests:
            source = inspect.getsource(globals()[test_name])
            assert re.search(rf"\bcompat\.{name}\b", source), (
                f"{test_name} is listed as the canary of compat.{name} but never uses it"
            )


def test_docs_compat_lists_every_compat_name() -> None:
    """docs/compat.md names every Keras 3 touch point (a row per compat name)."""
    page = (_ROOT / "docs" / "compat.md").read_text(encoding="utf-8")
    keras3 = page.split("### Keras 3", 1)[1].split("### Keras 2", 1)[0]
    missing = [name for name in compat.__all__ if f"`{name}`" not in keras3]
    assert not missing, f"docs/compat.md, Keras 3 table: add {missing}"


_HOOK_OWNERS = ("keras", "tensorflow", "tf_keras", "torch", "jax")
_WORLDS_ELSEWHERE = (
    "introspect_opt._tf_keras",
    "introspect_opt.tf_keras",
    "introspect_opt.__main__",
)


def _our_classes() -> list[type]:
    """Every class the Keras 3 modules of the package define, the ready-made optimizers too."""
    found: dict[int, type] = {}
    for info in pkgutil.walk_packages(introspect_opt.__path__, "introspect_opt."):
        if info.name.startswith(_WORLDS_ELSEWHERE):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            # Classes the factory makes report the public package as their module.
            if isinstance(value, type) and value.__module__.startswith("introspect_opt"):
                found[id(value)] = value
    return list(found.values())


def private_overrides(
    classes: list[type], hook_owners: tuple[str, ...] = _HOOK_OWNERS
) -> set[tuple[str, str, str]]:
    """(our class, private name, the Keras/TF class it overrides) for every such override."""
    found = set()
    for cls in classes:
        theirs = [k for k in cls.__mro__ if k.__module__.split(".")[0] in hook_owners]
        for ours in cls.__mro__:
            if not ours.__module__.startswith("introspect_opt"):
                continue
            for name in vars(ours):
                dunder = name.startswith("__") and name.endswith("__")
                if not name.startswith("_") or dunder or name == "_abc_impl":  # abc's own
                    continue
                overridden = next((k for k in theirs if name in vars(k)), None)
                if overridden is not None:
                    where = f"{overridden.__module__}.{overridden.__qualname__}"
                    found.add((ours.__qualname__, name, where))
    return found


@canary(PRIVATE_HOOKS="the private Keras/TensorFlow methods classes of ours override")
def test_our_classes_override_only_the_private_hooks_compat_declares() -> None:
    """A private Keras/TF method we override is declared (PRIVATE_HOOKS), with a canary.

    Also fails when a Keras release adds a private method whose name one of
    ours happens to have (it would silently replace theirs).
    """
    found = private_overrides(_our_classes())
    undeclared = sorted(f for f in found if f[1] not in compat.PRIVATE_HOOKS)
    assert not undeclared, (
        f"{versions()}: these classes of ours override private Keras/TensorFlow methods "
        f"that introspect_opt._keras3.compat.PRIVATE_HOOKS does not declare: {undeclared}. "
        "Declare the name there (with a canary), or rename ours."
    )
    overridden = {name for _, name, _ in found}
    if BACKEND == "tensorflow":  # every hook is overridden there: none declared in vain
        assert overridden == compat.PRIVATE_HOOKS
    assert compat.UPDATE_STEP_HOOK in overridden  # the guard sees overrides


# Package code outside the two compat modules may not import Keras's, TensorFlow's
# or tf_keras's private modules, nor use a private attribute that is not ours.
_COMPAT_FILES = ("introspect_opt/_keras3/compat.py", "introspect_opt/_tf_keras/compat.py")
_PRIVATE_NAME = re.compile(r"^_[A-Za-z][A-Za-z0-9_]*$")
_PRIVATE_MODULES = ("keras.src", "tensorflow.python", "tf_keras.src")
_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _names_defined(tree: ast.AST) -> set[str]:
    """The names a module of ours binds: definitions, assignments, dict keys, string constants."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            found.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, ast.alias) and node.asname:
            found.add(node.asname)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                found.add(node.slice.value)  # obj.__dict__["_ours"] = ...
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found.add(node.value.value)  # NAME = "_ours"
    return found


def private_touches(root: pathlib.Path = _ROOT) -> list[str]:
    """``file:line: what`` for each private Keras/TF/tf_keras touch outside the compat modules."""
    parsed = {
        path.relative_to(root).as_posix(): ast.parse(path.read_text(encoding="utf-8"))
        for package in ("introspect_opt", "introspect_opt_cli")
        for path in sorted((root / package).rglob("*.py"))
    }
    # The private names compat wraps are never ours, even where we override one.
    theirs = {
        node.value
        for file in _COMPAT_FILES
        for node in ast.walk(parsed[file])
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _PRIVATE_NAME.match(node.value)
    }
    ours = set()
    for file, tree in parsed.items():
        if file not in _COMPAT_FILES:
            ours |= _names_defined(tree) | set(pathlib.PurePosixPath(file).with_suffix("").parts)
    ours -= theirs
    found: list[tuple[str, int, str]] = []
    for file, tree in parsed.items():
        if file in _COMPAT_FILES:
            continue
        docstrings = _docstrings(tree)
        functions = [
            n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        # `super()._hook(...)` inside `def _hook`: an override calling Keras's (declared
        # and checked by test_our_classes_override_only_the_private_hooks_compat_declares).
        super_calls = {
            id(node)
            for function in functions
            for node in ast.walk(function)
            if isinstance(node, ast.Attribute)
            and node.attr == function.name
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "super"
        }
        for node in ast.walk(tree):
            what = None
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names if a.name.startswith(_PRIVATE_MODULES)]
                what = f"import {modules[0]}" if modules else None
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                _PRIVATE_MODULES
            ):
                what = f"from {node.module} import ..."
            elif isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
                private = _PRIVATE_NAME.match(node.attr) and node.attr not in ours
                if node.attr == "__internal__" or (private and id(node) not in super_calls):
                    what = f".{node.attr}"
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and (
                    (_PRIVATE_NAME.match(node.value) and node.value not in ours)
                    or any(m in node.value for m in _PRIVATE_MODULES)
                )
            ):
                what = repr(node.value)
            if what is not None:
                found.append((file, getattr(node, "lineno", 0), what))
    return [f"{file}:{line}: {what}" for file, line, what in sorted(found)]


@pytest.mark.canary
def test_no_private_touch_outside_the_compat_modules() -> None:
    """Only the compat modules import private modules or use private Keras/TF/tf_keras names."""
    touches = private_touches()
    assert not touches, (
        "Private Keras/TensorFlow/tf_keras names used outside introspect_opt/_keras3/compat.py "
        "and introspect_opt/_tf_keras/compat.py: move each into a small named function "
        "there, with a canary test:\n" + "\n".join(touches)
    )


def test_the_touch_scan_finds_touches(tmp_path: Path) -> None:
    """The scan reports a private import, attribute and string, and leaves our own names alone."""
    package = tmp_path / "introspect_opt"
    (package / "_keras3").mkdir(parents=True)
    (package / "_tf_keras").mkdir()
    (package / "_keras3" / "compat.py").write_text('HOOK = "_backend_update_step"\n')
    (package / "_tf_keras" / "compat.py").write_text("")
    (tmp_path / "introspect_opt_cli").mkdir()
    (package / "mod.py").write_text(
        "from keras.src.utils import naming\n"
        "import tensorflow as tf\n"
        "class Mine:\n"
        "    def _backend_update_step(self):\n"
        "        self._ours = 1\n"
        "        super()._backend_update_step()\n"
        "        return self._ours, self._iterations, getattr(self, '_built', 0)\n"
        "    def other(self):\n"
        "        return self._backend_update_step(), tf.__internal__\n"
    )
    assert private_touches(tmp_path) == [
        "introspect_opt/mod.py:1: from keras.src.utils import ...",
        "introspect_opt/mod.py:7: '_built'",
        "introspect_opt/mod.py:7: ._iterations",
        "introspect_opt/mod.py:9: .__internal__",
        "introspect_opt/mod.py:9: ._backend_update_step",
    ]
