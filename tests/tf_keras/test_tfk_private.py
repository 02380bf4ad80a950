"""Canaries: each fails loudly, naming versions, when tf_keras or TensorFlow changes an internal.

Every public name of ``introspect_opt._tf_keras.compat`` stands for one
tf_keras or TensorFlow name (or a structure they do not document). Each test
marked ``canary`` exercises exactly the names its ``@canary(...)`` lists
against the installed tf_keras, in a second or less, and on failure names the
tf_keras and TensorFlow versions, the private name and the compat name to
update (``TF_USE_LEGACY_KERAS=1 pytest -m canary tests/tf_keras``;
docs/compat.md). ``test_every_compat_name_has_a_canary`` fails when a compat
name has none.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import pytest
import tensorflow as tf
import tf_keras
from tfk_helpers import SCHEDULE, bits

import introspect_opt._tf_keras
from introspect_opt._tf_keras import compat as private

# compat name -> [(canary test, the private tf_keras/TensorFlow thing it checks)].
CANARIES: dict[str, list[tuple[str, str]]] = {}


def versions() -> str:
    """The installed tf_keras and TensorFlow, as failure messages name them."""
    return f"tf_keras {tf_keras.__version__} with TensorFlow {tf.__version__}"


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
                    f"{what} (introspect_opt._tf_keras.compat.{name})"
                    for name, what in touches.items()
                )
                pytest.fail(
                    f"{versions()}: one of these changed or is gone: {changed}. Update those "
                    "names of introspect_opt/_tf_keras/compat.py (see docs/compat.md).\n"
                    f"{type(error).__name__}: {error}"
                )

        return pytest.mark.canary(run)  # type: ignore[no-any-return]

    return decorate


def test_a_failing_canary_names_the_versions_and_what_to_update() -> None:
    """A canary's failure names tf_keras's version, the private name and the compat name."""

    def renamed() -> None:  # as if tf_keras had renamed `_name`
        private.legacy_name(object())

    broken = canary(legacy_name="OptimizerV2._name")(renamed)
    CANARIES["legacy_name"].pop()  # not a real canary
    assert [mark.name for mark in broken.pytestmark] == ["canary"]  # type: ignore[attr-defined]
    with pytest.raises(pytest.fail.Exception) as failure:
        broken()
    message = str(failure.value)
    assert message.startswith(f"tf_keras {tf_keras.__version__} with TensorFlow"), message
    assert "OptimizerV2._name (introspect_opt._tf_keras.compat.legacy_name)" in message
    assert "AttributeError: 'object' object has no attribute '_name'" in message


# --- public names, imported from one place ------------------------------------------


@canary(
    NewOptimizer="tf_keras.optimizers.Optimizer (tf_keras.src.optimizers.optimizer.Optimizer)",
    LegacyOptimizer="tf_keras.optimizers.legacy.Optimizer (optimizer_v2.OptimizerV2)",
    LearningRateSchedule="tf_keras.optimizers.schedules.LearningRateSchedule",
    Model="tf_keras.Model",
    Callback="tf_keras.callbacks.Callback",
    floatx="tf_keras.backend.floatx",
)
def test_the_public_names_are_tf_keras_own_and_tf_keras_is_tf_keras() -> None:
    """The classes compat hands out are what ``tf.keras`` (that is, tf_keras) exports."""
    assert tf.keras.Model is private.Model is tf_keras.Model
    assert tf.keras.callbacks.Callback is private.Callback
    assert tf.keras.optimizers.Optimizer is private.NewOptimizer
    assert tf.keras.optimizers.legacy.Optimizer is private.LegacyOptimizer
    assert isinstance(SCHEDULE, private.LearningRateSchedule)
    assert private.floatx() == tf_keras.backend.floatx() == "float32"


@canary(
    register_serializable="tf_keras.saving.register_keras_serializable",
    alias_bare_name="tf_keras.saving.get_custom_objects (the mutable global registry)",
)
def test_registration_by_package_and_by_bare_name() -> None:
    """A class registers as ``package>name`` and resolves by its bare class name too."""

    class CanaryOptimizerForRegistration(tf_keras.optimizers.SGD):
        pass

    cls = CanaryOptimizerForRegistration
    private.register_serializable(cls, "introspect_opt_canary", cls.__name__)
    assert tf_keras.saving.get_registered_name(cls) == f"introspect_opt_canary>{cls.__name__}"
    assert tf_keras.saving.get_registered_object(f"introspect_opt_canary>{cls.__name__}") is cls
    private.alias_bare_name(cls)
    assert tf_keras.saving.get_custom_objects()[cls.__name__] is cls
    config = tf_keras.optimizers.serialize(cls(0.1))
    config.pop("registered_name", None)  # an HDF5 load_model reads class_name alone
    assert type(tf_keras.optimizers.deserialize(config)) is cls


# --- the per-update hooks -------------------------------------------------------------


@canary(
    NEW_UPDATE_HOOK="Optimizer._distributed_apply_gradients_fn(distribution, "
    "grads_and_vars, **kwargs), through maybe_merge_call",
    LEGACY_UPDATE_HOOK="OptimizerV2._distributed_apply(distribution, grads_and_vars, "
    "apply_state, name), through maybe_merge_call",
)
def test_update_hooks_are_called_through_maybe_merge_call_with_these_arguments() -> None:
    """Both families run their per-update function through maybe_merge_call, with these args."""
    new_apply = inspect.getsource(tf_keras.optimizers.Optimizer._internal_apply_gradients)
    assert f"self.{private.NEW_UPDATE_HOOK}" in new_apply and "maybe_merge_call" in new_apply
    assert list(
        inspect.signature(getattr(private.NewOptimizer, private.NEW_UPDATE_HOOK)).parameters
    ) == ["self", "distribution", "grads_and_vars", "kwargs"]
    legacy_apply = inspect.getsource(tf_keras.optimizers.legacy.Optimizer.apply_gradients)
    assert f"self.{private.LEGACY_UPDATE_HOOK}, apply_state=apply_state" in legacy_apply
    assert list(
        inspect.signature(getattr(private.LegacyOptimizer, private.LEGACY_UPDATE_HOOK)).parameters
    ) == ["self", "distribution", "grads_and_vars", "apply_state", "name"]
    calls: list[str] = []
    for base, hook in (
        (tf_keras.optimizers.SGD, private.NEW_UPDATE_HOOK),
        (tf_keras.optimizers.legacy.SGD, private.LEGACY_UPDATE_HOOK),
    ):

        def counting(self: Any, *args: Any, _base: Any = base, _hook: str = hook, **kw: Any) -> Any:
            calls.append(_hook)
            return getattr(_base, _hook)(self, *args, **kw)

        optimizer = type("Counting", (base,), {hook: counting})(0.1)
        optimizer.apply_gradients([(tf.ones(1), tf.Variable([1.0]))])
    assert calls == [private.NEW_UPDATE_HOOK, private.LEGACY_UPDATE_HOOK]


@canary(
    LEGACY_RATE_KEY="OptimizerV2._prepare's apply_state[(device, dtype)]['lr_t']",
    legacy_rate_in_apply_state="apply_state keyed by (device, dtype), 'lr_t' in each",
    legacy_decayed_lr="OptimizerV2._decayed_lr",
    legacy_rate_hyper="OptimizerV2._get_hyper('learning_rate')",
    legacy_initial_decay="OptimizerV2._initial_decay",
    LearningRateSchedule="what _get_hyper returns for a schedule",
)
def test_legacy_apply_state_holds_the_rate_and_decayed_lr_is_what_we_mirror() -> None:
    """`_prepare` puts `lr_t` (= `_decayed_lr`) in apply_state; our derivation mirrors it."""
    optimizer = tf_keras.optimizers.legacy.SGD(SCHEDULE, decay=0.25)
    w = tf.Variable([1.0])
    optimizer.apply_gradients([(tf.ones(1), w)])
    apply_state = optimizer._prepare([w])
    (coefficients,) = apply_state.values()
    expected = bits(private.legacy_decayed_lr(optimizer, tf.float32))
    assert bits(coefficients[private.LEGACY_RATE_KEY]) == expected
    assert bits(private.legacy_rate_in_apply_state(apply_state, tf.float32)) == expected
    assert private.legacy_rate_in_apply_state({}, tf.float32) is None
    assert isinstance(
        private.legacy_rate_hyper(optimizer, tf.float32), private.LearningRateSchedule
    )
    assert private.legacy_initial_decay(optimizer) == 0.25
    source = inspect.getsource(tf_keras.optimizers.legacy.Optimizer._decayed_lr)
    assert "lr_t / (1.0 + decay_t * local_step)" in source and "lr_t(local_step)" in source


@canary(legacy_rate_ignores_decay="tf_keras.optimizers.legacy.Nadam._prepare_local")
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


@canary(
    new_learning_rate_source="Optimizer._learning_rate (the schedule or the rate variable)",
    forget_coalesced_children="_BaseOptimizer._trackable_children's cache _coalesced_children",
    new_is_built="Optimizer._built (absent before build)",
)
def test_new_optimizer_rate_source_and_children_cache() -> None:
    """`_learning_rate` is the schedule or the rate variable; children are cached once."""
    assert private.new_learning_rate_source(tf_keras.optimizers.SGD(SCHEDULE)) is SCHEDULE
    floating = tf_keras.optimizers.SGD(0.1)
    assert isinstance(private.new_learning_rate_source(floating), tf.Variable)
    assert not private.new_is_built(floating)
    floating.build([tf.Variable([1.0])])
    assert private.new_is_built(floating)
    listed = set(floating._trackable_children())
    floating.late_child = tf.Variable(2.0)
    assert "late_child" not in floating._trackable_children()  # cached
    private.forget_coalesced_children(floating)
    assert set(floating._trackable_children()) == listed | {"late_child"}


# --- tf.train.Checkpoint -----------------------------------------------------------------


@canary(
    NEW_STEP_CHILDREN="the new optimizer's checkpoint children '_iterations', '_variables'",
    LEGACY_STEP_CHILDREN="the legacy optimizer's checkpoint child 'iter'",
    RESTORE_HOOK="Trackable._lookup_dependency(name, cached_dependencies), called by "
    "restore._queue_children_for_restoration",
    is_restore_lookup="_lookup_dependency's cached_dependencies: given while restoring",
)
def test_checkpoint_child_names_and_restore_lookup(tmp_path: Path) -> None:
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
    lookups: list[tuple[str, bool]] = []

    def lookup(self: Any, name: str, cached_dependencies: Any = None) -> Any:
        lookups.append((name, private.is_restore_lookup(cached_dependencies)))
        return getattr(tf.Module, private.RESTORE_HOOK)(self, name, cached_dependencies)

    probe_class = type("Probe", (tf.Module,), {private.RESTORE_HOOK: lookup})
    probe = probe_class()
    probe.v = tf.Variable(1.0)
    assert ("v", False) in lookups
    path = tf.train.Checkpoint(probe=probe).write(str(tmp_path / "ck"))
    lookups.clear()
    tf.train.Checkpoint(probe=probe_class()).read(path)
    assert ("v", True) in lookups, lookups


@canary(
    TF_CHILDREN_HOOK="Trackable._trackable_children(save_type): 'checkpoint' or 'savedmodel'",
)
def test_children_are_listed_with_the_save_type(tmp_path: Path) -> None:
    """A checkpoint lists children with save type "checkpoint", a SavedModel with "savedmodel"."""
    types: list[str] = []

    def children(self: Any, save_type: Any = "checkpoint", **kwargs: Any) -> Any:
        types.append(save_type)
        return getattr(tf.Module, private.TF_CHILDREN_HOOK)(self, save_type, **kwargs)

    probe = type("Probe", (tf.Module,), {private.TF_CHILDREN_HOOK: children})()
    probe.v = tf.Variable(1.0)
    tf.train.Checkpoint(probe=probe).write(str(tmp_path / "ck"))
    assert set(types) == {"checkpoint"}, types
    types.clear()
    tf.saved_model.save(probe, str(tmp_path / "saved"))
    assert "savedmodel" in types, types


@canary(track="Trackable._track_trackable(child, name, overwrite=True)")
def test_tracking_a_legacy_child_restores_what_waited_for_it(tmp_path: Path) -> None:
    """A child tracked by name is saved, and takes the value a restore kept for that name."""
    legacy = tf_keras.optimizers.legacy.SGD(0.1)
    private.track(legacy, tf.Variable(4.0), "canary_child")
    assert "canary_child" in legacy._trackable_children()
    path = tf.train.Checkpoint(opt=legacy).write(str(tmp_path / "ck"))
    fresh = tf_keras.optimizers.legacy.SGD(0.1)
    tf.train.Checkpoint(opt=fresh).read(path)
    child = tf.Variable(0.0)
    private.track(fresh, child, "canary_child")
    assert float(child) == 4.0


@canary(
    LEGACY_CREATE_HOOK="OptimizerV2._create_all_weights(var_list), called by apply_gradients",
    legacy_create_slots="OptimizerV2._create_all_weights",
    legacy_has_counter="OptimizerV2._iterations (None until created)",
    legacy_create_counter_and_hypers="OptimizerV2._hypers_created / _create_hypers",
    legacy_name="OptimizerV2._name (its variables' name scope)",
    optimizer_label="Optimizer.name / OptimizerV2._name",
)
def test_legacy_optimizers_create_their_variables_lazily() -> None:
    """A legacy optimizer creates counter, hyperparameters and slots at its first update."""
    calls: list[int] = []

    def create(self: Any, var_list: Any) -> None:
        calls.append(len(var_list))
        getattr(tf_keras.optimizers.legacy.SGD, private.LEGACY_CREATE_HOOK)(self, var_list)

    optimizer = type(
        "Probe", (tf_keras.optimizers.legacy.SGD,), {private.LEGACY_CREATE_HOOK: create}
    )(0.1, momentum=0.9)
    w = tf.Variable([1.0, 2.0])
    optimizer.apply_gradients([(tf.ones(2), w)])
    assert calls == [1]
    lazy = tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9, name="Lazy")
    assert private.legacy_name(lazy) == "Lazy" == private.optimizer_label(lazy)
    assert private.optimizer_label(tf_keras.optimizers.SGD(0.1, name="New")) == "New"
    assert not private.legacy_has_counter(lazy)
    assert private.legacy_create_counter_and_hypers(lazy)
    assert private.legacy_has_counter(lazy)
    assert not private.legacy_create_counter_and_hypers(lazy)  # nothing missing
    assert [v.name for v in lazy.weights] == ["Lazy/iter:0"]
    private.legacy_create_slots(lazy, [w])
    assert lazy.get_slot_names() == ["momentum"]
    assert lazy.get_slot(w, "momentum").shape == w.shape


@canary(
    LEGACY_SLOT_RESTORE_HOOK="OptimizerV2._create_or_restore_slot_variable(position, "
    "slot_name, variable, slot_variable_shape)",
    restore_uid="Trackable._update_uid",
    position_restore_uid="CheckpointPosition.checkpoint.restore_uid",
    legacy_remove_slot="OptimizerV2._slots / _weights / _slot_names, optimizer_v2._var_key",
    legacy_drop_deferred_slot_restores="OptimizerV2._deferred_slot_restorations",
    new_variable_list="Optimizer._variables (the checkpoint child, slots by position)",
    drop_deferred_restores="Trackable._deferred_dependencies (name -> CheckpointPosition)",
    new_pending_slot_restores="Optimizer._variables._deferred_dependencies",
)
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
    slot = fresh.get_slot(w2, "momentum")
    assert fresh.get_slot_names() == ["momentum"] and any(v is slot for v in fresh.weights)
    private.legacy_remove_slot(fresh, w2, "momentum")
    assert fresh.get_slot_names() == [] and not any(v is slot for v in fresh.weights)
    with pytest.raises(KeyError):
        fresh.get_slot(w2, "momentum")
    # Legacy, in graph code: the slot values wait, tagged with the restore.
    with tf.Graph().as_default():
        w3 = tf.Variable([0.0, 0.0])
        graph = tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9)
        tf.train.Checkpoint(w=w3, opt=graph).read(path)
        uid = private.restore_uid(graph)
        waiting = [
            position
            for by_variable in graph._deferred_slot_restorations.values()
            for positions in by_variable.values()
            for position in positions
        ]
        assert [private.position_restore_uid(p) for p in waiting] == [uid]
        private.legacy_drop_deferred_slot_restores(graph, uid)
        assert not any(graph._deferred_slot_restorations.values())
    # New: slots wait by position in `_variables` until build, tagged with the restore.
    new = tf_keras.optimizers.SGD(0.1, momentum=0.9)
    new.apply_gradients([(tf.ones(2), w)])
    path = tf.train.Checkpoint(opt=new).write(str(tmp_path / "new" / "ck"))
    unbuilt = tf_keras.optimizers.SGD(0.1, momentum=0.9)
    tf.train.Checkpoint(opt=unbuilt).read(path)
    assert private.new_pending_slot_restores(unbuilt) == 1
    waiting_new = private.new_variable_list(unbuilt)._deferred_dependencies
    assert set(waiting_new) == {"1"}
    private.drop_deferred_restores(private.new_variable_list(unbuilt), private.restore_uid(unbuilt))
    assert not waiting_new
    assert private.new_pending_slot_restores(unbuilt) == 0


# --- strategies and DTensor ----------------------------------------------------------


@canary(
    strategy_scope="Optimizer._distribution_strategy (the strategy it was created under)",
    is_dtensor="Optimizer._mesh / _run_with_dtensor",
)
def test_an_optimizer_remembers_its_strategy_and_mesh(devices: list[str]) -> None:
    """A new optimizer records its strategy (entered unless one is) and its DTensor mesh."""
    strategy = tf.distribute.MirroredStrategy(devices[:2])
    with strategy.scope():
        optimizer = tf_keras.optimizers.SGD(0.1)
    with private.strategy_scope(optimizer):
        assert tf.distribute.get_strategy() is strategy
    other = tf.distribute.OneDeviceStrategy(devices[0])
    with other.scope(), private.strategy_scope(optimizer):
        assert tf.distribute.get_strategy() is other  # a strategy entered already stays
    assert not private.is_dtensor(tf_keras.optimizers.SGD(0.1))
    mesh = tf.experimental.dtensor.create_mesh([("batch", 1)], devices=devices[:1])
    assert private.is_dtensor(tf_keras.optimizers.SGD(0.1, mesh=mesh))


# --- .keras / .weights.h5 files --------------------------------------------------------


@canary(
    ENTRIES_GROUP="tf_keras saving_lib's '<object>/vars' group",
    LOSS_SCALE_INNER_GROUP="LossScaleOptimizerV3's 'inner_optimizer' group",
    h5_parent="the h5py group tf_keras's H5IOStore hands load_own_variables",
    describe_store="that group's .file.filename and .name",
    LossScaleOptimizer="tf_keras.mixed_precision.LossScaleOptimizer (both wrappers' base)",
)
def test_files_keep_entries_in_vars_groups_and_hand_over_h5_groups(tmp_path: Path) -> None:
    """The optimizer gets its own ``vars`` group, inside a group that holds the wrapped one's."""
    seen: list[tuple[Any, str, list[str]]] = []

    class Probe(tf_keras.optimizers.SGD):
        def load_own_variables(self, store: Any) -> None:
            parent = private.h5_parent(store)
            seen.append((store.name, private.describe_store(store), sorted(parent.keys())))
            super().load_own_variables(store)

    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
    model.compile(Probe(0.1, momentum=0.9), loss="mse")
    wrapper = model.optimizer
    assert isinstance(wrapper, private.LossScaleOptimizer)
    assert isinstance(
        tf_keras.mixed_precision.LossScaleOptimizer(tf_keras.optimizers.legacy.SGD()),
        private.LossScaleOptimizer,
    )
    wrapper.build(model.trainable_variables)
    model.save_weights(tmp_path / "m.weights.h5")
    model.save(tmp_path / "m.keras")
    with h5py.File(tmp_path / "m.weights.h5", "r") as f:
        inner = f"optimizer/{private.LOSS_SCALE_INNER_GROUP}"
        assert f"optimizer/{private.ENTRIES_GROUP}" in f
        assert f"{inner}/{private.ENTRIES_GROUP}" in f
    model.load_weights(tmp_path / "m.weights.h5")
    tf_keras.models.load_model(tmp_path / "m.keras", custom_objects={"Probe": Probe})
    group = f"/optimizer/{private.LOSS_SCALE_INNER_GROUP}/{private.ENTRIES_GROUP}"
    assert seen == [
        (group, f"'{tmp_path / 'm.weights.h5'}' (group '{group}')", [private.ENTRIES_GROUP]),
        (
            group,
            f"the .keras archive's model.weights.h5 (group '{group}')",
            [private.ENTRIES_GROUP],
        ),
    ]
    assert private.h5_parent({}) is None  # a file without the optimizer's entries


# --- the guards --------------------------------------------------------------------------


def _compat_names() -> set[str]:
    """What compat defines (not the modules and typing helpers it imports)."""
    helpers = ("typing", "collections.abc", "__future__")
    return {
        name
        for name, value in vars(private).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", None) not in helpers
    }


@pytest.mark.canary
def test_every_compat_name_has_a_canary() -> None:
    """Each name in compat.__all__ has a canary here that uses it; __all__ lists them all."""
    assert sorted(_compat_names()) == sorted(private.__all__), (
        "introspect_opt/_tf_keras/compat.py: __all__ must list every name it defines"
    )
    missing = sorted(set(private.__all__) - set(CANARIES))
    assert not missing, (
        f"introspect_opt._tf_keras.compat.{', '.join(missing)} has no canary: add a test to "
        "tests/tf_keras/test_tfk_private.py, decorated with @canary(<name>=<the private "
        "thing>), that exercises it against the installed tf_keras"
    )
    assert not sorted(set(CANARIES) - set(private.__all__))
    for name, tests in CANARIES.items():
        for test_name, _ in tests:
            source = inspect.getsource(globals()[test_name])
            assert re.search(rf"\bprivate\.{name}\b", source), (
                f"{test_name} is listed as the canary of compat.{name} but never uses it"
            )


def test_docs_compat_lists_every_compat_name() -> None:
    """docs/compat.md names every tf_keras touch point (a row per compat name)."""
    page = Path(__file__).resolve().parents[2] / "docs" / "compat.md"
    keras2 = page.read_text(encoding="utf-8").split("### Keras 2", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in private.__all__ if f"`{name}`" not in keras2]
    assert not missing, f"docs/compat.md, Keras 2 table: add {missing}"


def _our_classes() -> list[type]:
    """Every class the tf_keras modules of the package define, the ready-made optimizers too."""
    found = []
    names = ["introspect_opt.tf_keras"] + [
        info.name
        for info in pkgutil.walk_packages(
            introspect_opt._tf_keras.__path__, "introspect_opt._tf_keras."
        )
    ]
    for name in names:
        module = importlib.import_module(name)
        found += [
            value
            for value in vars(module).values()
            if isinstance(value, type) and value.__module__ == module.__name__
        ]
    return found


@canary(PRIVATE_HOOKS="the private tf_keras/TensorFlow methods classes of ours override")
def test_our_classes_override_only_the_private_hooks_compat_declares() -> None:
    """A private tf_keras/TF method we override is declared (PRIVATE_HOOKS), with a canary.

    Also fails when a tf_keras release adds a private method whose name one of
    ours happens to have (it would silently replace theirs).
    """
    found = set()
    for cls in _our_classes():
        theirs = [
            k for k in cls.__mro__ if k.__module__.split(".")[0] in ("tf_keras", "tensorflow")
        ]
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
    undeclared = sorted(f for f in found if f[1] not in private.PRIVATE_HOOKS)
    assert not undeclared, (
        f"{versions()}: these classes of ours override private tf_keras/TensorFlow methods "
        f"that introspect_opt._tf_keras.compat.PRIVATE_HOOKS does not declare: {undeclared}. "
        "Declare the name there (with a canary), or rename ours."
    )
    assert {name for _, name, _ in found} == private.PRIVATE_HOOKS  # none declared in vain
