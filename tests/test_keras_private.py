"""Fails loudly when a Keras release changes an internal we depend on."""

from __future__ import annotations

import inspect
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from helpers import SCHEDULE, make_model

from introspect_opt import IntrospectableSGD, _keras_private


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
        assert sorted(group) == ["applied_learning_rate", "update_count"]
        assert len(store.keys()) == len(model.optimizer._plain_variables())
    finally:
        store.close()


def test_loss_scale_optimizer_reads_the_wrapped_variables_before_it_assigns(
    tmp_path: Path,
) -> None:
    """Its load_own_variables lists ``variables`` (own, then wrapped) before any assign.

    That read is where the wrapped optimizer checks the file first
    (``wrapper_loading``); the wrapped group must sit under ``inner_optimizer``.
    """
    load = keras.optimizers.LossScaleOptimizer.load_own_variables
    assert load.__code__ is _keras_private._WRAPPER_LOAD_CODE
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


def test_the_model_that_trains_an_optimizer_is_found_on_the_stack() -> None:
    """owning_model finds a built model holding the optimizer, also behind loss scaling."""
    model = make_model()
    optimizer = IntrospectableSGD(0.1)
    model.compile(keras.optimizers.LossScaleOptimizer(optimizer), loss="mse")

    def deeper() -> object:
        return _keras_private.owning_model(optimizer)

    assert deeper() is model
    assert _keras_private.owning_model(IntrospectableSGD(0.1)) is None


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
        assert sorted(group.keys()) == ["applied_learning_rate", "update_count"]
        assert np.asarray(group["update_count"]) == 1
        assert len(f["optimizer/vars"].keys()) == len(model.optimizer._plain_variables())


def test_skip_mismatch_is_read_from_the_load_running_now(tmp_path: Path) -> None:
    """Inside a real load, the flag is what load_weights was given; outside, False."""
    seen: list[bool] = []

    class Probe(keras.layers.Layer):
        def load_own_variables(self, store):  # type: ignore[no-untyped-def]
            seen.append(_keras_private.keras_load_skips_mismatches())

    model = keras.Sequential([keras.Input((2,)), Probe()])
    model.save_weights(tmp_path / "m.weights.h5")
    model.load_weights(tmp_path / "m.weights.h5", skip_mismatch=True)
    model.load_weights(tmp_path / "m.weights.h5")
    assert seen == [True, False]
    assert _keras_private.keras_load_skips_mismatches() is False


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
