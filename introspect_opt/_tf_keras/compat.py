"""Every use of tf_keras (Keras 2) internals, in one place.

tf_keras has no public hook for "the learning rate an update applied" nor for
"evaluate the rate at another step". Each name below wraps exactly one private
name of tf_keras or TensorFlow (or one structure they do not document); nothing
else in the package touches them. They were checked against tf-keras 2.21.0
with TensorFlow 2.21 (docs/compat.md): the canary tests in
``tests/tf_keras/test_tfk_private.py`` (``pytest -m canary``) fail loudly,
naming the tf_keras version and the name, when a release changes any of them.

This module is the first to import ``tf_keras``: importing it without the
``tf-keras`` package installed raises an ``ImportError`` that says what to
install. Nothing outside the ``_tf_keras_*`` modules imports it, so the Keras 3
package keeps working where tf-keras is absent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

try:
    import tf_keras
except ImportError as error:  # pragma: no cover - exercised only without tf-keras
    raise ImportError(
        "introspect_opt.tf_keras needs the tf-keras package (Keras 2), which is not "
        f"installed ({error}). Install it with `pip install tf-keras==<your "
        "TensorFlow's major.minor>.*` (or, in a checkout of introspect-opt, "
        '`pip install ".[tf-keras]"`); for Keras 3 '
        "use the classes of the top-level `introspect_opt` package instead."
    ) from error

import tensorflow as tf
from tf_keras.src.optimizers import optimizer as _new_optimizer_module
from tf_keras.src.optimizers.legacy import optimizer_v2 as _legacy_optimizer_module

# Every name below stands for one tf_keras or TensorFlow name, private or not
# (``floatx``, ``Model``: one place to import tf_keras from). The test file
# tests/tf_keras/test_tfk_private.py lists a canary test for each
# (`pytest -m canary`), and fails when a name is added here without one.
__all__ = [
    "ENTRIES_GROUP",
    "LEGACY_CREATE_HOOK",
    "LEGACY_RATE_KEY",
    "LEGACY_SLOT_RESTORE_HOOK",
    "LEGACY_STEP_CHILDREN",
    "LEGACY_UPDATE_HOOK",
    "LOSS_SCALE_INNER_GROUP",
    "NEW_STEP_CHILDREN",
    "NEW_UPDATE_HOOK",
    "PRIVATE_HOOKS",
    "RESTORE_HOOK",
    "TF_CHILDREN_HOOK",
    "Callback",
    "LearningRateSchedule",
    "LegacyOptimizer",
    "LossScaleOptimizer",
    "Model",
    "NewOptimizer",
    "alias_bare_name",
    "describe_store",
    "drop_deferred_restores",
    "floatx",
    "forget_coalesced_children",
    "h5_parent",
    "is_dtensor",
    "is_restore_lookup",
    "legacy_create_counter_and_hypers",
    "legacy_create_slots",
    "legacy_decayed_lr",
    "legacy_drop_deferred_slot_restores",
    "legacy_has_counter",
    "legacy_initial_decay",
    "legacy_name",
    "legacy_rate_hyper",
    "legacy_rate_ignores_decay",
    "legacy_rate_in_apply_state",
    "legacy_remove_slot",
    "new_is_built",
    "new_learning_rate_source",
    "new_pending_slot_restores",
    "new_variable_list",
    "optimizer_label",
    "position_restore_uid",
    "register_serializable",
    "restore_uid",
    "strategy_scope",
    "track",
]

NewOptimizer: Any = tf_keras.optimizers.Optimizer
LegacyOptimizer: Any = tf_keras.optimizers.legacy.Optimizer
LearningRateSchedule: Any = tf_keras.optimizers.schedules.LearningRateSchedule
Model: Any = tf_keras.Model
Callback: Any = tf_keras.callbacks.Callback
# tf_keras's saving_lib keeps an object's own entries in the group ``vars``
# under the object's group in ``.keras`` / ``.weights.h5`` files
# (``H5IOStore.get``); the cached rate's group sits beside it.
ENTRIES_GROUP = "vars"
# The group under which a LossScaleOptimizerV3 (tf_keras's saving_lib walks its
# `inner_optimizer` attribute) saves the optimizer it wraps in .keras /
# .weights.h5 files, next to its own entries: a copy of that optimizer's.
LOSS_SCALE_INNER_GROUP = "inner_optimizer"
# One public name covers both wrappers: LossScaleOptimizer (around a legacy
# optimizer) and LossScaleOptimizerV3 (around a new one) share this base.
LossScaleOptimizer: Any = tf_keras.mixed_precision.LossScaleOptimizer


def floatx() -> str:
    """tf_keras's default float dtype (``tf.keras.backend.floatx()``)."""
    return str(tf_keras.backend.floatx())


def register_serializable(cls: Any, package: str, name: str) -> None:
    """Registers a class for tf_keras serialization as ``package>name``."""
    tf_keras.saving.register_keras_serializable(package=package, name=name)(cls)


def alias_bare_name(cls: Any) -> None:
    """Makes the bare class name resolve too, without changing the registered name.

    A ``LossScaleOptimizer`` serializes its inner optimizer in the new format
    (``class_name`` plus ``registered_name``), but an HDF5 ``load_model``
    deserializes it the legacy way, by ``class_name`` alone: "Unknown
    optimizer: 'IntrospectableSGD'" for any registered optimizer (tf-keras
    2.21). ``get_custom_objects()`` is the public, mutable global registry; an
    existing entry of that name is left alone.
    """
    tf_keras.saving.get_custom_objects().setdefault(cls.__name__, cls)


assert _new_optimizer_module.Optimizer is NewOptimizer
assert _legacy_optimizer_module.OptimizerV2 is LegacyOptimizer

# --- the per-update hooks --------------------------------------------------
#
# Both optimizer families run their variable updates through
# ``tf.__internal__.distribute.interim.maybe_merge_call(fn, strategy, ...)``:
# ``fn`` runs once per applied update, in cross-replica context (or, where a
# strategy needs no merge call, in each replica), after the gradients were
# aggregated and clipped, and it increments ``iterations`` itself. A
# ``LossScaleOptimizer`` never calls it on a step it skips.

# New optimizer (tf_keras/src/optimizers/optimizer.py, ``Optimizer``):
# ``fn(distribution, grads_and_vars)``. Every ``update_step`` (and weight
# decay) reads ``tf.cast(self.learning_rate, variable.dtype)``: the learning-rate
# variable for a float rate, and for a schedule the variable
# ``_current_learning_rate``, which ``apply_gradients`` assigns
# ``schedule(iterations)`` before anything else.
NEW_UPDATE_HOOK = "_distributed_apply_gradients_fn"

# Legacy optimizer (tf_keras/src/optimizers/legacy/optimizer_v2.py,
# ``OptimizerV2``): ``fn(distribution, grads_and_vars, apply_state, name)``.
# ``apply_gradients`` computes ``apply_state[(device, dtype)]["lr_t"] =
# tf.identity(self._decayed_lr(dtype))`` before the merge call; every built-in
# ``_resource_apply_dense`` / ``_resource_apply_sparse`` reads that tensor.
LEGACY_UPDATE_HOOK = "_distributed_apply"
LEGACY_RATE_KEY = "lr_t"

# The names under which ``tf.train.Checkpoint`` finds an optimizer's step
# counter (and, for the new optimizer, its variable list). A restore that asks
# for one of them restores ``iterations``.
NEW_STEP_CHILDREN = frozenset({"_iterations", "_variables"})
LEGACY_STEP_CHILDREN = frozenset({"iter"})

# TensorFlow's checkpointing protocol (tensorflow/python/checkpoint/restore.py,
# ``_queue_children_for_restoration``): while restoring, TensorFlow asks every
# object for each child the checkpoint holds, by name, passing the object's
# children as the second argument; only afterwards does it assign all restored
# values at once. ``Trackable._track_trackable`` asks too, without it.
RESTORE_HOOK = "_lookup_dependency"

# TensorFlow's checkpointing protocol: ``tf.train.Checkpoint`` and SavedModel
# list an object's children through this method, with the save type
# (``"checkpoint"`` or ``"savedmodel"``). The state leaves its manifest out of
# SavedModels.
TF_CHILDREN_HOOK = "_trackable_children"

# Legacy optimizer: ``apply_gradients`` calls ``_create_all_weights(var_list)``
# on every update, under ``tf.init_scope()`` and the optimizer's name scope,
# before anything reads the variables; it creates the step counter, the
# hyperparameters and the slots of ``var_list`` that do not exist yet.
LEGACY_CREATE_HOOK = "_create_all_weights"


def new_is_built(optimizer: Any) -> bool:
    """Whether a new optimizer was built (``Optimizer._built``, absent before ``build``)."""
    return bool(getattr(optimizer, "_built", False))


def legacy_create_slots(optimizer: Any, var_list: Any) -> None:
    """Creates a legacy optimizer's counter, hyperparameters and slots for ``var_list``.

    What its first ``apply_gradients`` does (``LEGACY_CREATE_HOOK``), without
    applying anything.
    """
    getattr(optimizer, LEGACY_CREATE_HOOK)(var_list)


def optimizer_label(optimizer: Any) -> str:
    """An optimizer's name: ``name`` (new family) or ``_name`` (legacy, which has no ``name``)."""
    return str(getattr(optimizer, "name", None) or getattr(optimizer, "_name", "?"))


def legacy_rate_in_apply_state(apply_state: Any, dtype: Any) -> Any:
    """The ``lr_t`` tensor a legacy update read for variables of ``dtype``, or None.

    ``OptimizerV2._prepare`` keys ``apply_state`` by ``(device, dtype)``;
    every device holds the same value. With variables of several dtypes, the
    one of the cache's dtype is taken, else the first.
    """
    if not apply_state:
        return None
    found = [
        (str(device), str(var_dtype), coefficients[LEGACY_RATE_KEY], var_dtype)
        for (device, var_dtype), coefficients in apply_state.items()
        if LEGACY_RATE_KEY in coefficients
    ]
    if not found:
        return None
    found.sort(key=lambda item: (item[3] != dtype, item[0], item[1]))
    return found[0][2]


def is_restore_lookup(cached_dependencies: Any) -> bool:
    """Whether a ``_lookup_dependency`` call comes from a checkpoint restore."""
    return cached_dependencies is not None


def new_learning_rate_source(optimizer: Any) -> Any:
    """What a new optimizer's rate comes from: a schedule or the rate variable."""
    return optimizer._learning_rate


def forget_coalesced_children(optimizer: Any) -> None:
    """Makes a new optimizer list its checkpoint children afresh.

    ``_BaseOptimizer._trackable_children`` computes them once and keeps them in
    ``_coalesced_children``; a child attached later (by ``introspect()``) would
    otherwise never be saved.
    """
    optimizer.__dict__.pop("_coalesced_children", None)


def legacy_rate_hyper(optimizer: Any, dtype: Any) -> Any:
    """A legacy optimizer's ``learning_rate`` hyperparameter, as ``_decayed_lr`` reads it."""
    return optimizer._get_hyper("learning_rate", dtype)


def legacy_initial_decay(optimizer: Any) -> float:
    """The legacy ``decay`` argument (``lr / (1 + decay * step)``), 0.0 when unused."""
    return float(optimizer._initial_decay)


# Legacy Nadam's `_prepare_local` sets `lr_t` to the learning-rate
# hyperparameter itself, not `_decayed_lr`: its `decay` (the `schedule_decay`
# argument, 0.004 by default) shapes the momentum schedule, not the rate.
_LEGACY_NADAM_PREPARE = tf_keras.optimizers.legacy.Nadam._prepare_local


def legacy_rate_ignores_decay(optimizer: Any) -> bool:
    """Whether a legacy optimizer's updates read the rate without the ``decay`` division."""
    return getattr(type(optimizer), "_prepare_local", None) is _LEGACY_NADAM_PREPARE


def legacy_decayed_lr(optimizer: Any, dtype: Any) -> Any:
    """The legacy optimizer's own rate at the current ``iterations``."""
    return optimizer._decayed_lr(dtype)


def legacy_name(optimizer: Any) -> str:
    """A legacy optimizer's name, the name scope its variables are created under."""
    return str(optimizer._name)


def legacy_has_counter(optimizer: Any) -> bool:
    """Whether a legacy optimizer created its step counter (``OptimizerV2._iterations``)."""
    return optimizer._iterations is not None


def legacy_create_counter_and_hypers(optimizer: Any) -> bool:
    """Creates a legacy optimizer's ``iterations`` and hyperparameter variables if missing.

    ``OptimizerV2`` creates them at its first ``apply_gradients``
    (``_create_all_weights``); a checkpoint restored before that keeps their
    values waiting inside TensorFlow, and a save in between drops them.
    Returns whether anything was created.
    """
    missing = not legacy_has_counter(optimizer) or not optimizer._hypers_created
    if missing:
        # The name scope apply_gradients creates them under.
        with tf.name_scope(legacy_name(optimizer)), tf.init_scope():
            _ = optimizer.iterations
            optimizer._create_hypers()
    return bool(missing)


def new_pending_slot_restores(optimizer: Any) -> int:
    """How many of a new optimizer's variables a checkpoint restore left waiting for ``build``.

    ``tf.train.Checkpoint`` keeps the values of ``_variables/<i>`` that do not
    exist yet in the list's ``_deferred_dependencies`` until ``build`` creates
    them.
    """
    return len(getattr(optimizer._variables, "_deferred_dependencies", {}) or {})


def track(owner: Any, child: Any, name: str) -> None:
    """Makes ``child`` a named checkpoint dependency of a legacy optimizer.

    ``OptimizerV2`` is a plain ``Trackable``: attribute assignment does not
    track. Tracking by name also restores a checkpoint value that waited for it.
    """
    owner._track_trackable(child, name=name, overwrite=True)


@contextlib.contextmanager
def strategy_scope(optimizer: Any) -> Iterator[None]:
    """The scope of the strategy an optimizer was created under, if not entered already."""
    strategy = getattr(optimizer, "_distribution_strategy", None)
    if strategy is None or tf.distribute.has_strategy():
        yield
    else:
        with strategy.scope():
            yield


def is_dtensor(optimizer: Any) -> bool:
    """Whether a new optimizer runs with DTensor (``mesh=``, or a DTensor strategy)."""
    return bool(getattr(optimizer, "_mesh", None) or getattr(optimizer, "_run_with_dtensor", False))


def h5_parent(store: Any) -> Any:
    """The h5py group around a ``.keras`` / ``.weights.h5`` entry group, or None.

    tf_keras's saving_lib hands an optimizer the h5py group ``<path>/vars`` of
    its own entries (``H5IOStore``), or ``{}`` when the file has none, or a
    dict for the rarely used ``npz`` weights format.
    """
    return getattr(store, "parent", None) if hasattr(store, "file") else None


def describe_store(store: Any) -> str:
    """A human-readable "which file, which group" for error messages."""
    if not hasattr(store, "file"):
        return "the file being loaded"
    filename = str(getattr(store.file, "filename", ""))
    where = f"group '{store.name}'"
    if filename and not filename.startswith("<"):
        return f"'{filename}' ({where})"
    # A .keras archive: tf_keras opens the weights file inside it from memory.
    return f"the .keras archive's model.weights.h5 ({where})"


# --- undoing a refused tf.train.Checkpoint restore --------------------------
#
# TensorFlow restores a checkpoint in two passes (restore.py,
# ``_restore_descendants``): it first walks the object graph, binding each
# checkpoint entry to an object (and keeping entries for objects that do not
# exist yet in ``_deferred_dependencies``; for a legacy optimizer's slots, in
# ``_deferred_slot_restorations``, or it creates them at once, eagerly, with
# the checkpoint's value, ``_create_or_restore_slot_variable``), then restores
# Python state, then assigns every variable. The manifest, Python state, is
# checked between the two; a refusal undoes what the walk did. Every object
# the walk reaches takes the restore's number in ``_update_uid``.
LEGACY_SLOT_RESTORE_HOOK = "_create_or_restore_slot_variable"

# Every private method our classes override: a test fails when a class of
# ours overrides a private tf_keras or TensorFlow method not listed here.
PRIVATE_HOOKS = frozenset(
    {
        NEW_UPDATE_HOOK,
        LEGACY_UPDATE_HOOK,
        RESTORE_HOOK,
        TF_CHILDREN_HOOK,
        LEGACY_CREATE_HOOK,
        LEGACY_SLOT_RESTORE_HOOK,
    }
)


def restore_uid(trackable: Any) -> int:
    """The number of the last checkpoint restore that reached ``trackable``."""
    return int(trackable._update_uid)


def position_restore_uid(position: Any) -> int:
    """The number of the restore a checkpoint position belongs to."""
    return int(position.checkpoint.restore_uid)


def _drop_positions(waiting: dict[Any, Any], uid: int) -> None:
    for name in list(waiting):
        kept = [p for p in waiting[name] if p.checkpoint.restore_uid != uid]
        if kept:
            waiting[name] = kept
        else:
            del waiting[name]


def drop_deferred_restores(trackable: Any, uid: int) -> None:
    """Forgets the values restore ``uid`` keeps for children ``trackable`` does not have yet."""
    waiting = getattr(trackable, "_deferred_dependencies", None)
    if waiting:
        _drop_positions(waiting, uid)


def new_variable_list(optimizer: Any) -> Any:
    """A new optimizer's variable list, the checkpoint child ``_variables`` (slots by position)."""
    return getattr(optimizer, "_variables", None)


def legacy_drop_deferred_slot_restores(optimizer: Any, uid: int) -> None:
    """Forgets the slot values restore ``uid`` keeps for slots a legacy optimizer will create."""
    for by_variable in getattr(optimizer, "_deferred_slot_restorations", {}).values():
        _drop_positions(by_variable, uid)


def legacy_remove_slot(optimizer: Any, variable: Any, slot_name: str) -> None:
    """Removes a slot a refused restore created, as if it had never been created.

    ``OptimizerV2.add_slot`` keeps it in ``_slots[<variable key>][slot_name]``,
    appends it to ``_weights``, and its name to ``_slot_names`` (what
    ``get_slot_names()`` returns) the first time.
    """
    key = _legacy_optimizer_module._var_key(variable)
    slots = optimizer._slots.get(key, {})
    slot = slots.pop(slot_name, None)
    if not slots:
        optimizer._slots.pop(key, None)
    optimizer._weights[:] = [w for w in optimizer._weights if w is not slot]
    if not any(slot_name in other for other in optimizer._slots.values()):
        optimizer._slot_names[:] = [n for n in optimizer._slot_names if n != slot_name]
