"""The tf_keras and TensorFlow internals the mechanism relies on, as installed.

Each test fails loudly when a release changes one of the names isolated in
``introspect_opt/_tf_keras_private.py`` (checked: tf-keras 2.21.0, TF 2.21).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import tensorflow as tf
import tf_keras
from tfk_helpers import SCHEDULE, bits

from introspect_opt._tf_keras import compat as private


def test_update_hooks_are_called_through_maybe_merge_call_with_these_arguments() -> None:
    """Both families run their per-update function through maybe_merge_call, with these args."""
    new_apply = inspect.getsource(tf_keras.optimizers.Optimizer._internal_apply_gradients)
    assert f"self.{private.NEW_UPDATE_HOOK}" in new_apply and "maybe_merge_call" in new_apply
    assert list(
        inspect.signature(getattr(private.NewOptimizer, private.NEW_UPDATE_HOOK)).parameters
    ) == [
        "self",
        "distribution",
        "grads_and_vars",
        "kwargs",
    ]
    legacy_apply = inspect.getsource(tf_keras.optimizers.legacy.Optimizer.apply_gradients)
    assert f"self.{private.LEGACY_UPDATE_HOOK}, apply_state=apply_state" in legacy_apply
    assert list(
        inspect.signature(getattr(private.LegacyOptimizer, private.LEGACY_UPDATE_HOOK)).parameters
    ) == ["self", "distribution", "grads_and_vars", "apply_state", "name"]


def test_legacy_apply_state_holds_the_rate_and_decayed_lr_is_what_we_mirror() -> None:
    """`_prepare` puts `lr_t` (= `_decayed_lr`) in apply_state; our derivation mirrors it."""
    optimizer = tf_keras.optimizers.legacy.SGD(SCHEDULE, decay=0.25)
    w = tf.Variable([1.0])
    optimizer.apply_gradients([(tf.ones(1), w)])
    apply_state = optimizer._prepare([w])
    (coefficients,) = apply_state.values()
    assert bits(coefficients[private.LEGACY_RATE_KEY]) == bits(
        private.legacy_decayed_lr(optimizer, tf.float32)
    )
    assert isinstance(
        private.legacy_rate_hyper(optimizer, tf.float32), private.LearningRateSchedule
    )
    assert private.legacy_initial_decay(optimizer) == 0.25
    source = inspect.getsource(tf_keras.optimizers.legacy.Optimizer._decayed_lr)
    assert "lr_t / (1.0 + decay_t * local_step)" in source and "lr_t(local_step)" in source


def test_legacy_nadam_reads_its_rate_without_the_decay_division() -> None:
    """Legacy Nadam's `lr_t` is its rate hyperparameter; other legacy classes' is `_decayed_lr`."""
    optimizer = tf_keras.optimizers.legacy.Nadam(0.05)  # decay (schedule_decay) 0.004
    w = tf.Variable([1.0])
    for _ in range(3):
        optimizer.apply_gradients([(tf.ones(1), w)])
    (coefficients,) = optimizer._prepare([w]).values()
    assert private.legacy_initial_decay(optimizer) > 0.0
    assert bits(coefficients[private.LEGACY_RATE_KEY]) == bits(0.05)
    assert bits(private.legacy_decayed_lr(optimizer, tf.float32)) != bits(0.05)
    assert private.legacy_rate_ignores_decay(optimizer)
    for name in ("SGD", "Adam", "Adadelta", "Adagrad", "Adamax", "Ftrl", "RMSprop"):
        other = getattr(tf_keras.optimizers.legacy, name)(0.05, decay=0.5)
        other.apply_gradients([(tf.ones(1), tf.Variable([1.0]))])
        (coefficients,) = other._prepare([tf.Variable([1.0])]).values()
        assert bits(coefficients[private.LEGACY_RATE_KEY]) == bits(
            private.legacy_decayed_lr(other, tf.float32)
        ), name
        assert not private.legacy_rate_ignores_decay(other)


def test_new_optimizer_rate_source_and_children_cache() -> None:
    """`_learning_rate` is the schedule or the rate variable; children are cached by name."""
    assert private.new_learning_rate_source(tf_keras.optimizers.SGD(SCHEDULE)) is SCHEDULE
    assert isinstance(private.new_learning_rate_source(tf_keras.optimizers.SGD(0.1)), tf.Variable)
    source = inspect.getsource(tf_keras.optimizers.Optimizer._trackable_children)
    assert "self._coalesced_children" in source


def test_checkpoint_child_names_and_restore_lookup() -> None:
    """The step counter is saved under the names we watch; restores pass the children along."""
    for optimizer, names in (
        (tf_keras.optimizers.SGD(0.1), private.NEW_STEP_CHILDREN),
        (tf_keras.optimizers.legacy.SGD(0.1), private.LEGACY_STEP_CHILDREN),
    ):
        _ = optimizer.iterations
        assert names <= set(optimizer._trackable_children())
    source = inspect.getsource(tf.__internal__.tracking.Trackable._lookup_dependency)
    assert "cached_dependencies" in source
    from tensorflow.python.checkpoint import restore

    assert f"{private.RESTORE_HOOK}(child.local_name," in inspect.getsource(
        restore._queue_children_for_restoration
    )


def test_loss_scale_optimizer_classes_share_the_public_base() -> None:
    """Both tf_keras loss-scale wrappers are instances of the exported LossScaleOptimizer."""
    new = tf_keras.mixed_precision.LossScaleOptimizer(tf_keras.optimizers.SGD())
    legacy = tf_keras.mixed_precision.LossScaleOptimizer(tf_keras.optimizers.legacy.SGD())
    assert isinstance(new, private.LossScaleOptimizer) and isinstance(
        legacy, private.LossScaleOptimizer
    )
    assert isinstance(new, private.NewOptimizer) and isinstance(legacy, private.LegacyOptimizer)


def test_checkpoint_restore_internals_a_refused_manifest_undoes(tmp_path: Path) -> None:
    """What a restore leaves before the manifest is checked sits where the undo looks."""
    params = inspect.signature(getattr(private.LegacyOptimizer, private.LEGACY_SLOT_RESTORE_HOOK))
    assert list(params.parameters) == [
        "self",
        "slot_variable_position",
        "slot_name",
        "variable",
        "slot_variable_shape",
    ]
    # Legacy: a restore into an optimizer without slots creates them at once.
    w = tf.Variable([1.0, 2.0])
    legacy = tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9)
    legacy.apply_gradients([(tf.ones(2), w)])
    path = tf.train.Checkpoint(w=w, opt=legacy).write(str(tmp_path / "legacy" / "ck"))
    w2 = tf.Variable([0.0, 0.0])
    fresh = tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9)
    tf.train.Checkpoint(w=w2, opt=fresh).read(path)
    assert private.restore_uid(fresh) > 0
    assert isinstance(fresh._deferred_slot_restorations, dict)
    slot = fresh.get_slot(w2, "momentum")
    assert fresh.get_slot_names() == ["momentum"] and any(v is slot for v in fresh.weights)
    private.legacy_remove_slot(fresh, w2, "momentum")
    assert fresh.get_slot_names() == [] and not any(v is slot for v in fresh.weights)
    with pytest.raises(KeyError):
        fresh.get_slot(w2, "momentum")
    # New: slots wait by position in `_variables` until build, tagged with the restore.
    new = tf_keras.optimizers.SGD(0.1, momentum=0.9)
    new.apply_gradients([(tf.ones(2), w)])
    path = tf.train.Checkpoint(opt=new).write(str(tmp_path / "new" / "ck"))
    unbuilt = tf_keras.optimizers.SGD(0.1, momentum=0.9)
    tf.train.Checkpoint(opt=unbuilt).read(path)
    waiting = private.new_variable_list(unbuilt)._deferred_dependencies
    assert set(waiting) == {"1"}
    private.drop_deferred_restores(private.new_variable_list(unbuilt), private.restore_uid(unbuilt))
    assert not waiting
