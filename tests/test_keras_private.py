"""Fails loudly when a Keras release changes an internal we depend on."""

from __future__ import annotations

import copy
import gc
import inspect
import pickle
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
from helpers import SCHEDULE, make_model

from introspect_opt import IntrospectableSGD, introspect
from introspect_opt._keras3 import compat as _keras_private


def test_update_step_hook_exists_with_the_expected_signature() -> None:
    """Keras still routes applied updates through _backend_update_step."""
    hook = getattr(keras.optimizers.Optimizer, _keras_private.UPDATE_STEP_HOOK)
    assert list(inspect.signature(hook).parameters) == [
        "self",
        "grads",
        "trainable_variables",
        "learning_rate",
    ]


@pytest.mark.tf_only
def test_tensorflow_lists_children_before_it_restores_or_saves(tmp_path: Path) -> None:
    """tf.train.Checkpoint still calls _trackable_children before restoring and saving."""
    import tensorflow as tf

    calls: list[str] = []

    class Probe(tf.Module):
        def _trackable_children(self, save_type="checkpoint", **kwargs):  # type: ignore[no-untyped-def]
            calls.append(save_type)
            return super()._trackable_children(save_type, **kwargs)

    probe = Probe()
    probe.v = tf.Variable(1.0)
    path = tf.train.Checkpoint(probe=probe).write(str(tmp_path / "ck"))
    assert calls
    calls.clear()
    tf.train.Checkpoint(probe=Probe()).read(path)
    assert calls
    assert hasattr(tf.Module, _keras_private.TF_CHILDREN_HOOK)


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
        group = _keras_private.read_child_group(store, "_introspection_state")
        assert sorted(group) == ["applied_learning_rate", "manifest", "update_count"]
        assert len(store.keys()) == len(model.optimizer._plain_variables())
    finally:
        store.close()


def test_loss_scale_optimizer_loads_the_wrapped_variables_by_position_first(
    tmp_path: Path,
) -> None:
    """Its inherited load assigns its own variables, then the wrapped ones, from its group.

    That is why the wrapped optimizer checks the file before the wrapper's
    load; the wrapped group must sit under ``inner_optimizer``.
    """
    wrapper_class = _keras_private.WRAPPER_CLASS
    assert wrapper_class is keras.optimizers.LossScaleOptimizer
    assert _keras_private.WRAPPER_LOAD not in vars(wrapper_class)  # BaseOptimizer's
    load = getattr(wrapper_class, _keras_private.WRAPPER_LOAD)
    source = inspect.getsource(load)
    assert source.index("self.variables") < source.index(".assign(")
    assert list(inspect.signature(load).parameters) == ["self", "store"]
    model = make_model()
    wrapped = IntrospectableSGD(SCHEDULE, momentum=0.9)
    model.compile(keras.optimizers.LossScaleOptimizer(wrapped), loss="mse")
    before_build = _keras_private.wrapper_own_variables(model.optimizer)
    assert len(before_build) == _keras_private.WRAPPER_VARIABLES_BEFORE_BUILD
    model.optimizer.build(model.trainable_variables)
    wrapper = model.optimizer
    names = [v.name for v in _keras_private.wrapper_own_variables(wrapper)]
    assert _keras_private.LOSS_SCALE_VARIABLE in names, names
    assert [id(v) for v in wrapper.variables] == [
        id(v) for v in _keras_private.wrapper_variables(wrapper)
    ]
    model.save_weights(tmp_path / "m.weights.h5")
    with h5py.File(tmp_path / "m.weights.h5") as f:
        assert f"optimizer/{_keras_private.WRAPPED_CHILD}/vars" in f
        assert len(f["optimizer/vars"]) == len(wrapper.variables)


def test_loss_scale_optimizer_signals_the_optimizer_it_wraps_once_it_holds_it() -> None:
    """Its constructor sets the wrapped ``loss_scale_factor`` to None after storing it.

    The wrapped optimizer finds its new wrapper at that moment: the wrapper
    must already hold it as ``inner_optimizer``.
    """
    seen: list[tuple[object, bool]] = []

    class Probe(keras.optimizers.SGD):
        def __setattr__(self, name, value):  # type: ignore[no-untyped-def]
            super().__setattr__(name, value)
            if name == _keras_private.WRAPPING_SIGNAL and "_probe_ready" in vars(self):
                held = [
                    o
                    for o in gc.get_objects(0) + gc.get_objects(1) + gc.get_objects(2)
                    if type(o) is _keras_private.WRAPPER_CLASS
                    and vars(o).get(_keras_private.WRAPPED_CHILD) is self
                ]
                seen.append((value, len(held) == 1))

    inner = Probe(0.1, loss_scale_factor=128.0)
    inner.__dict__["_probe_ready"] = True
    wrapper = keras.optimizers.LossScaleOptimizer(inner)
    assert seen == [(None, True)], seen
    assert inner.loss_scale_factor is None
    assert getattr(wrapper, _keras_private.WRAPPED_CHILD) is inner


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
        calls.append(f"wrapper {store._h5_entry_path}")
        type(wrapper).load_own_variables(wrapper, store)

    def wrapped_load(store):  # type: ignore[no-untyped-def]
        calls.append(f"wrapped {store._h5_entry_path}")
        inner_load(store)

    vars(wrapper)[_keras_private.WRAPPER_LOAD] = instance_load
    vars(wrapper.inner_optimizer)["load_own_variables"] = wrapped_load
    model.load_weights(tmp_path / "m.weights.h5")
    assert calls == ["wrapper optimizer", f"wrapped optimizer/{_keras_private.WRAPPED_CHILD}"]


def _hook_of(wrapper: Any) -> Any:
    hook = vars(wrapper).get(_keras_private.WRAPPER_LOAD)
    assert isinstance(hook, _keras_private.CheckedWrapperLoad), hook
    assert hook.wraps(wrapper.inner_optimizer)
    return hook


def test_every_wrapper_of_an_introspectable_optimizer_checks_before_it_loads(
    tmp_path: Path,
) -> None:
    """Wrapped by compile, by hand (built before), by load_model, or before introspect()."""
    keras.config.set_dtype_policy("mixed_float16")
    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    _hook_of(model.optimizer)
    built = IntrospectableSGD(0.1)
    built.build(model.trainable_variables)
    _hook_of(keras.optimizers.LossScaleOptimizer(built))
    model.save(tmp_path / "m.keras")
    _hook_of(keras.saving.load_model(tmp_path / "m.keras").optimizer)
    plain = keras.optimizers.SGD(0.1)
    wrapper = keras.optimizers.LossScaleOptimizer(plain)
    assert _keras_private.WRAPPER_LOAD not in vars(wrapper)
    introspect(plain)
    _hook_of(wrapper)
    assert _keras_private.hook_wrapper_loads(plain) == 0  # hooked once
    # Not a wrapper of it: nothing is hooked.
    assert _keras_private.hook_wrapper_loads(IntrospectableSGD(0.1)) == 0


def test_the_load_check_is_never_persisted_or_shared(tmp_path: Path) -> None:
    """Config, pickle, deepcopy and tf.train.Checkpoint see a plain LossScaleOptimizer."""
    inner = IntrospectableSGD(0.1, name="sgd")
    wrapper = keras.optimizers.LossScaleOptimizer(inner, name="wrapper")
    hook = _hook_of(wrapper)
    unhooked = keras.optimizers.LossScaleOptimizer(
        IntrospectableSGD(0.1, name="sgd"), name="wrapper"
    )
    del unhooked.__dict__[_keras_private.WRAPPER_LOAD]
    assert wrapper.get_config() == unhooked.get_config()
    for copied in (copy.deepcopy(wrapper), copy.copy(wrapper), pickle.loads(pickle.dumps(wrapper))):
        assert _hook_of(copied) is not hook  # its own, for its own wrapped optimizer
        assert copied.inner_optimizer is not inner
    with pytest.raises(TypeError, match="copy or pickle the LossScaleOptimizer"):
        copy.deepcopy(hook)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        model = make_model()
        model.compile(wrapper, loss="mse")
        wrapper.build(model.trainable_variables)
        path = tf.train.Checkpoint(optimizer=wrapper).write(str(tmp_path / "ck"))
        names = [name for name, _ in tf.train.list_variables(path)]
        assert not [n for n in names if _keras_private.WRAPPER_LOAD in n], names
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
                for i, v in enumerate(_keras_private.wrapper_own_variables(model.optimizer))
                if v.name == _keras_private.LOSS_SCALE_VARIABLE
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


def test_hook_runs_once_per_applied_update_only() -> None:
    """Called once per real update, never on accumulation micro-steps (but JAX).

    On JAX, Keras runs it on every micro-step and then reverts everything in
    optimizer.variables on the steps that are not updates; that is why the
    cache is listed there on that backend.
    """
    calls: list[float] = []

    class Counting(keras.optimizers.SGD):
        def _backend_update_step(self, grads, trainable_variables, learning_rate):  # type: ignore[no-untyped-def]
            calls.append(float(learning_rate))
            return super()._backend_update_step(grads, trainable_variables, learning_rate)

    optimizer = Counting(SCHEDULE, gradient_accumulation_steps=2)
    w = keras.Variable([1.0, 2.0])
    for _ in range(6):
        optimizer.apply_gradients([(keras.ops.ones((2,)), w)])
    assert len(calls) == (6 if keras.backend.backend() == "jax" else 3)


def test_raw_counter_and_rate_at_step() -> None:
    """The raw counter counts micro-steps; learning_rate_at matches learning_rate."""
    optimizer = keras.optimizers.SGD(SCHEDULE, gradient_accumulation_steps=3)
    w = keras.Variable([1.0])
    for _ in range(4):
        optimizer.apply_gradients([(keras.ops.ones((1,)), w)])
    counter = _keras_private.raw_step_counter(optimizer)
    assert int(counter) == 4 and int(optimizer.iterations) == 1
    assert float(_keras_private.learning_rate_at(optimizer, counter)) == float(
        optimizer.learning_rate
    )
    assert _keras_private.learning_rate_source(optimizer) is SCHEDULE
    floating = keras.optimizers.SGD(0.25)
    assert float(_keras_private.learning_rate_at(floating, 7)) == 0.25


def test_saving_walks_the_state_into_a_group_of_its_own(tmp_path: Path) -> None:
    """Keras's saving walk still visits KerasSaveable attributes of an optimizer."""
    model = make_model()
    model.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.apply_gradients(
        [(keras.ops.ones(v.shape), v) for v in model.trainable_variables]
    )
    model.save_weights(tmp_path / "m.weights.h5")
    with h5py.File(tmp_path / "m.weights.h5", "r") as f:
        group = f["optimizer/_introspection_state/vars"]
        assert sorted(group.keys()) == ["applied_learning_rate", "manifest", "update_count"]
        assert np.asarray(group["update_count"]) == 1
        assert len(f["optimizer/vars"].keys()) == len(model.optimizer._plain_variables())


@pytest.mark.tf_only
def test_tensorflow_checkpoint_hooks_exist(tmp_path: Path) -> None:
    """tf.Module still asks for checkpoint children by name and keeps missing ones."""
    import tensorflow as tf

    module = tf.Module()
    assert list(inspect.signature(module._lookup_dependency).parameters) == [
        "name",
        "cached_dependencies",
    ]
    holder = tf.Module()
    holder.child = tf.Module()
    holder.child.v = tf.Variable(1.0)
    path = tf.train.Checkpoint(holder=holder).save(str(tmp_path / "ckpt"))
    empty = tf.Module()
    tf.train.Checkpoint(holder=empty).restore(path)
    assert _keras_private.checkpoint_waits_for(empty, "child")


@pytest.mark.tf_only
def test_tensorflow_keeps_unbuilt_slots_by_position_with_their_values(tmp_path: Path) -> None:
    """A restore into an unbuilt optimizer leaves its slots in ``_variables``'s deferred list.

    _keras_private.waiting_checkpoint_slots reads them there (positions, values
    through ``CheckpointPosition.value_tensors``) and drop_waiting_checkpoint_slots
    forgets them (binding holders as restored). Checked against TensorFlow 2.21.
    """
    import tensorflow as tf

    plain = keras.optimizers.SGD(0.1, momentum=0.9)
    variable = keras.Variable(np.ones((2, 3), "float32"))
    plain.apply_gradients([(keras.ops.ones((2, 3)), variable)])
    path = tf.train.Checkpoint(optimizer=plain).write(str(tmp_path / "ck"))
    target = keras.optimizers.SGD(0.1, momentum=0.9)
    tf.train.Checkpoint(optimizer=target).read(path)
    waiting = _keras_private.waiting_checkpoint_slots(target)
    assert sorted(waiting) == [2], (
        f"TensorFlow {tf.__version__} / Keras {keras.__version__}: the deferred "
        "`_variables` positions changed"
    )
    np.testing.assert_array_equal(waiting[2], keras.ops.convert_to_numpy(plain.variables[2]))
    _keras_private.drop_waiting_checkpoint_slots(target)
    assert _keras_private.waiting_checkpoint_slots(target) == {}
