"""Every use of Keras internals, in one place.

Keras 3 has no public hook for "the learning rate an update applied", for
"walk this object when saving a ``.keras`` file", or for "evaluate the rate
at another step". Each function below wraps exactly one private name (or
one structure Keras does not document); nothing else in the package touches
them. They were checked against Keras 3.15.0 and 3.15.1 with TensorFlow 2.21
(docs/compat.md): the canary tests in ``tests/test_keras_private.py``
(``pytest -m canary``) fail loudly, naming the Keras version and the name,
when a release changes any of them.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import weakref
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
from keras.src.optimizers.schedules import learning_rate_schedule

# ``_walk_saveable`` in keras/src/saving/saving_lib.py saves and loads every
# attribute of an optimizer that is an instance of this class, each in a group
# of its own. That is how the cached rate travels in ``.keras`` and
# ``.weights.h5`` files without changing the optimizer's own variable count,
# which plain Keras optimizers insist on.
from keras.src.saving.keras_saveable import KerasSaveable as KerasSaveable

# Every name below stands for one private Keras or TensorFlow name (or a
# structure Keras does not document). tests/test_keras_private.py lists a
# canary test for each (`pytest -m canary`), and fails when a name is added
# here without one.
__all__ = [
    "ASSIGNMENT_HOOKS",
    "LOSS_SCALE_VARIABLE",
    "MANIFEST_ATTRIBUTE",
    "PRIVATE_HOOKS",
    "SAVEABLE_TYPE_HOOK",
    "TF_CHILDREN_HOOK",
    "TF_LOOKUP_HOOK",
    "TF_RESTORE_HOOK",
    "TF_SAVE_HOOK",
    "UPDATE_STEP_HOOK",
    "VARIABLES_CHILD",
    "VARIABLE_ATTRIBUTE",
    "WEIGHT_DECAY_CLASSES",
    "WEIGHT_DECAY_HOOK",
    "WRAPPED_CHILD",
    "WRAPPER_CLASS",
    "WRAPPER_LOAD",
    "WRAPPER_VARIABLES_BEFORE_BUILD",
    "WRAPPING_SIGNAL",
    "CheckedWrapperLoad",
    "KerasSaveable",
    "Trackable",
    "backend_class",
    "checkpoint_waits_for",
    "decays",
    "default_name",
    "describe_store",
    "drop_waiting_checkpoint_slots",
    "drop_waiting_checkpoint_values",
    "eager_scope",
    "foreign_strategy",
    "fused_step_skips_user_methods",
    "generic_update_step",
    "has_rate_variable",
    "hook_wrapper_loads",
    "initialize_trackable",
    "is_restore_lookup",
    "is_traced",
    "learning_rate_at",
    "learning_rate_source",
    "point_store",
    "public_class",
    "rate_variable",
    "raw_step_counter",
    "read_child_group",
    "rebind_checkpoint_value",
    "store_entry_path",
    "strategy_scope",
    "sync_training_state",
    "unnumbered_default_name",
    "unpickle",
    "update_step_is_keras_own",
    "variable_index",
    "variable_key",
    "variables_built_for",
    "waiting_checkpoint_slots",
    "waiting_checkpoint_values",
    "wrapper_own_variables",
    "wrapper_variables",
]

# The method that every Keras backend calls once per *applied* update with the
# exact learning-rate value it hands to ``update_step`` (inside the
# gradient-accumulation branch that really updates; never on skipped steps).
UPDATE_STEP_HOOK = "_backend_update_step"

# The method every Keras backend calls right before UPDATE_STEP_HOOK, in the
# same branch and with the same variables, to apply decoupled weight decay
# (Muon overrides it with a decay per variable kind). While a feature watches
# each variable's own update, the mixin defers it and applies it one variable
# at a time, right before that variable's update step (see _keras3.mixin).
WEIGHT_DECAY_HOOK = "_apply_weight_decay"

# Keras's update steps change a model variable only through the optimizer's
# own ``assign``, ``assign_add`` and ``assign_sub`` ("should be used in
# optimizers instead of ``variable.assign(value)`` to support backend specific
# optimizations": base_optimizer's docstrings; Keras's optimizer_sparse_test
# checks it for every built-in class). The mixin overrides all three (public
# methods), so that a variable's watched turn sees the change the update step
# makes, where it makes it (see _keras3.turns).
ASSIGNMENT_HOOKS = ("assign", "assign_add", "assign_sub")


def update_step_is_keras_own(cls: type, ours: type) -> bool:
    """Whether ``cls`` updates through a Keras optimizer's own update step.

    True when its ``update_step`` and ``_backend_update_step`` (other than
    ``ours``, the mixin) come from Keras's own modules, and its
    ASSIGNMENT_HOOKS from ``ours``: every change the update step makes to a
    variable then reaches the mixin. A user's update step, or a user's
    assignment method that might not call ours, makes it False.
    """

    def first_definer(name: str, skip: type | None) -> type | None:
        return next((k for k in cls.__mro__ if k is not skip and name in vars(k)), None)

    if any(first_definer(name, None) is not ours for name in ASSIGNMENT_HOOKS):
        return False
    for name in ("update_step", UPDATE_STEP_HOOK):
        definer = first_definer(name, ours)
        if definer is None or not definer.__module__.startswith("keras."):
            return False
    return True


def fused_step_skips_user_methods(cls: type, ours: type) -> bool:
    """Whether ``cls`` is a user's subclass of a fused torch class of ours.

    Keras's fused torch classes (``keras.src.backend.torch.optimizers``)
    update through ``_parallel_update_step`` with ``torch._foreach``, never
    calling ``update_step`` or the ASSIGNMENT_HOOKS; Keras instantiates them
    only for its own exact classes (``TorchOptimizer.__new__``), so a user's
    subclass of ``keras.optimizers.Adam`` runs its own ``update_step``. Ours
    extend the fused classes: a user's subclass that defines those methods
    needs the generic step (``generic_update_step``) to match plain Keras.
    """
    if keras.backend.backend() != "torch":
        return False
    fused = any(
        "_parallel_update_step" in vars(k) and k.__module__.startswith(_TORCH_OPTIMIZERS)
        for k in cls.__mro__
    )
    return fused and not update_step_is_keras_own(cls, ours)


_TORCH_OPTIMIZERS = "keras.src.backend.torch.optimizers."


def generic_update_step(optimizer: Any, grads: Any, variables: Any, learning_rate: Any) -> None:
    """Keras's generic update step, as plain Keras resolves it for a user's subclass.

    The first ``_backend_update_step`` of a Keras class in the MRO that is
    not one of the fused torch classes: Nadam's (which advances its
    ``u_product``, then calls BaseOptimizer's), else BaseOptimizer's, which
    calls ``update_step`` for each variable.
    """
    for klass in type(optimizer).__mro__:
        step = vars(klass).get(UPDATE_STEP_HOOK)
        module = klass.__module__
        if step is None or not module.startswith("keras.") or module.startswith(_TORCH_OPTIMIZERS):
            continue
        step(optimizer, grads, variables, learning_rate)
        return
    raise RuntimeError(  # pragma: no cover - BaseOptimizer defines it
        f"no Keras update step found for {type(optimizer).__name__}; please report this "
        "with your Keras version."
    )


# TensorFlow's checkpointing protocol (checked against TensorFlow 2.20 and
# 2.21): ``tf.train.Checkpoint`` lists an object's children through this
# method before it restores them (restore.py, _queue_children_for_restoration:
# called without arguments) and before it saves them (trackable_view.py:
# called with the save type). The mixin overrides it on the TensorFlow
# backend: before a save, state waiting for ``build`` is built in where safe;
# before a restore, a file load still queued is superseded (see _keras3.persistence).
TF_CHILDREN_HOOK = "_trackable_children"

# More of TensorFlow's Trackable protocol (tensorflow/python/trackable/base.py,
# checked against TensorFlow 2.20 and 2.21), which the state and the objects
# that stand in for queued slots implement:
# * ``_lookup_dependency(name, cached_dependencies)``: a restore asks for each
#   child it holds by name, passing the children it listed (``is_restore_lookup``);
# * ``_serialize_to_tensors()`` / ``_restore_from_tensors(tensors)``: what an
#   object without variables saves, as a dict of tensors by attribute name.
TF_LOOKUP_HOOK = "_lookup_dependency"
TF_SAVE_HOOK = "_serialize_to_tensors"
TF_RESTORE_HOOK = "_restore_from_tensors"

# ``saving_lib._walk_saveable`` asks every ``KerasSaveable`` for its kind with
# ``_obj_type()`` and skips the attributes Keras's own objects of that kind
# have (``get_attr_skipset``). The state answers "Optimizer".
SAVEABLE_TYPE_HOOK = "_obj_type"

# Every private method our classes override: a test fails when a class of
# ours overrides a private Keras or TensorFlow method not listed here.
PRIVATE_HOOKS = frozenset(
    {
        UPDATE_STEP_HOOK,
        WEIGHT_DECAY_HOOK,
        TF_CHILDREN_HOOK,
        TF_LOOKUP_HOOK,
        TF_SAVE_HOOK,
        TF_RESTORE_HOOK,
        SAVEABLE_TYPE_HOOK,
    }
)


def is_restore_lookup(cached_dependencies: Any) -> bool:
    """Whether a ``_lookup_dependency`` call comes from a checkpoint restore.

    A restore passes the children it listed; ``Trackable._track_trackable``
    (an attribute being set) passes nothing.
    """
    return cached_dependencies is not None


def backend_class(optimizer_class: type) -> type:
    """The class Keras really instantiates for ``optimizer_class`` on this backend.

    On the torch backend, ``TorchOptimizer.__new__`` swaps the exact built-in
    classes for fused ``torch._foreach_*`` variants (``keras/src/backend/torch/
    optimizers``), whose results differ from the generic update in the last
    bits. An introspectable subclass must extend that variant to stay
    bit-identical. ``__new__`` alone runs no constructor code.
    """
    if keras.backend.backend() != "torch":
        return optimizer_class
    cls: Any = optimizer_class
    return type(cls.__new__(cls))


def public_class(optimizer_class: type) -> type:
    """The ``keras.optimizers`` class behind a backend variant (torch), else itself."""
    if not optimizer_class.__module__.startswith("keras.src.backend."):
        return optimizer_class
    exported = {v for v in vars(keras.optimizers).values() if isinstance(v, type)}
    return next((c for c in optimizer_class.__mro__ if c in exported), optimizer_class)


def raw_step_counter(optimizer: Any) -> Any:
    """The optimizer's raw step counter variable (micro-steps included).

    ``optimizer.iterations`` divides by ``gradient_accumulation_steps``; the
    schedule is evaluated at the raw counter.
    """
    return optimizer._iterations


def variables_built_for(optimizer: Any) -> list[Any]:
    """The model variables a built optimizer tracks (``_trainable_variables``), in order.

    ``apply(grads)`` without variables updates these; slots belong to them
    by position.
    """
    return list(optimizer._trainable_variables)


def decays(optimizer: Any, variable: Any) -> bool:
    """Whether the optimizer's decoupled weight decay changes ``variable``.

    Keras's own tests, as its ``_apply_weight_decay`` makes them per
    variable: every backend's returns early for ``weight_decay=None`` and
    skips what ``exclude_from_weight_decay`` names (``_use_weight_decay``);
    Muon's decays the variables it updates as AdamW (``_should_use_adamw``)
    by ``adam_weight_decay`` instead. No other Keras class has a decay of
    its own (``WEIGHT_DECAY_CLASSES``, pinned by a canary).
    """
    if not optimizer._use_weight_decay(variable):
        return False
    rate = getattr(optimizer, "weight_decay", None)
    muon = getattr(keras.optimizers, "Muon", None)
    if muon is not None and isinstance(optimizer, muon) and optimizer._should_use_adamw(variable):
        rate = optimizer.adam_weight_decay
    return rate is not None


# The Keras classes that define ``_apply_weight_decay`` (what ``decays`` follows).
WEIGHT_DECAY_CLASSES = frozenset(
    {
        "keras.src.optimizers.base_optimizer.BaseOptimizer",
        "keras.src.backend.tensorflow.optimizer.TFOptimizer",
        "keras.src.backend.torch.optimizers.torch_optimizer.TorchOptimizer",
        "keras.src.optimizers.muon.Muon",
    }
)


def variable_key(optimizer: Any, variable: Any) -> Any:
    """Keras's own key for ``variable`` (``_var_key``).

    Equal for the Keras variable and the ``tf.distribute`` variable or
    component that stands for it, which an update step may be handed instead.
    """
    return optimizer._var_key(variable)


def variable_index(optimizer: Any, variable: Any) -> int:
    """The position of ``variable`` among ``variables_built_for(optimizer)``.

    Keras's own lookup (``_get_variable_index``): it also finds the Keras
    variable a ``tf.distribute`` variable stands for.
    """
    return int(optimizer._get_variable_index(variable))


def unpickle(optimizer_class: type, *args: Any) -> Any:
    """Rebuilds an object of ``optimizer_class`` from the arguments its pickle holds.

    ``KerasSaveable.__reduce__`` returns ``(self._unpickle_model, args)`` (a
    whole ``.keras`` archive in memory); this calls that class method.
    """
    cls: Any = optimizer_class
    return cls._unpickle_model(*args)


def sync_training_state(model: Any) -> None:
    """Puts the state that ``fit`` keeps off the variables back onto them (JAX only).

    On JAX, ``fit`` carries the training state outside the variables between
    steps; ``JAXTrainer.jax_state_sync`` (public name, undocumented) writes
    it back. Elsewhere there is nothing to do.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def learning_rate_at(optimizer: Any, step: Any) -> Any:
    """The learning rate Keras would pass to ``update_step`` at raw ``step``.

    Mirrors ``BaseOptimizer._get_current_learning_rate`` with the step given
    explicitly instead of read from ``optimizer._iterations``.
    """
    rate = optimizer._learning_rate
    if isinstance(rate, learning_rate_schedule.LearningRateSchedule):
        return rate(step)
    if isinstance(rate, keras.Variable):
        return rate
    if callable(rate):
        return rate()
    return rate


def has_rate_variable(optimizer: Any) -> bool:
    """Whether the rate is a variable (a float rate) held in optimizer.variables."""
    return isinstance(optimizer._learning_rate, keras.Variable)


def rate_variable(optimizer: Any) -> Any:
    """The variable holding a float rate (in optimizer.variables); None for a schedule."""
    rate = optimizer._learning_rate
    return rate if isinstance(rate, keras.Variable) else None


# A ``LossScaleOptimizer`` saves and loads the variables of the optimizer it
# wraps in its own group too, by position (``BaseOptimizer.load_own_variables``,
# which it inherits), *before* Keras loads the wrapped optimizer's own group,
# and tells the wrapped optimizer neither that it loads nor who wraps it.
# Two facts let the wrapped optimizer check the whole file first (checked
# against Keras 3.15.1; tests/test_keras_private.py fails when they change):
# * ``LossScaleOptimizer.__init__`` stores it as ``inner_optimizer`` and then
#   sets its ``loss_scale_factor`` to None (WRAPPING_SIGNAL): the wrapped
#   optimizer sees that assignment, and finds the new wrapper on the heap;
# * ``saving_lib._load_state`` calls ``saveable.load_own_variables(store)``,
#   looked up on the instance: an instance attribute of that one wrapper
#   (``CheckedWrapperLoad``) runs the check, then its class's method.
WRAPPER_CLASS = keras.optimizers.LossScaleOptimizer
WRAPPING_SIGNAL = "loss_scale_factor"
WRAPPER_LOAD = "load_own_variables"
WRAPPED_CHILD = "inner_optimizer"  # the wrapped optimizer's group, in the wrapper's
# A LossScaleOptimizer's own variables before ``build`` (iterations, learning
# rate); ``build`` adds the step counter and the loss scale.
WRAPPER_VARIABLES_BEFORE_BUILD = 2
LOSS_SCALE_VARIABLE = "dynamic_scale"  # the name of its loss-scale variable


class CheckedWrapperLoad:
    """``load_own_variables`` of one wrapper: the wrapped optimizer's check, then Keras's load.

    Holds both optimizers weakly, and is never persisted: Keras copies,
    pickles and saves a wrapper through its config (``KerasSaveable.__reduce__``,
    ``get_config``), whose constructor hooks the new wrapper again; anything
    that would copy this object instead raises.
    """

    __slots__ = ("_wrapped", "_wrapper")

    def __init__(self, wrapper: Any, wrapped: Any) -> None:
        self._wrapper = weakref.ref(wrapper)
        self._wrapped = weakref.ref(wrapped)

    def wraps(self, optimizer: Any) -> bool:
        """Whether this hook checks loads for ``optimizer``."""
        return self._wrapped() is optimizer

    def __call__(self, store: Any) -> None:
        wrapper, wrapped = self._wrapper(), self._wrapped()
        if wrapper is None:  # only a reference kept to this very object can call it then
            raise ReferenceError("The LossScaleOptimizer this load was for no longer exists.")
        # Only while it still wraps that optimizer, and only for HDF5 stores,
        # which the check can read ahead in (``read_child_group``).
        if (
            getattr(wrapper, WRAPPED_CHILD, None) is wrapped
            and wrapped is not None
            and hasattr(store, "_h5_entry_path")
        ):
            wrapped._check_wrapper_load(wrapper, store)
        getattr(type(wrapper), WRAPPER_LOAD)(wrapper, store)

    def __reduce__(self) -> Any:
        raise TypeError(
            "introspect_opt's load check of a LossScaleOptimizer is not copied or "
            "pickled on its own: copy or pickle the LossScaleOptimizer (through Keras)."
        )


def _wrapper_classes() -> set[type]:
    """``LossScaleOptimizer`` and every subclass of it defined so far."""
    classes, pending = set(), [WRAPPER_CLASS]
    while pending:
        cls = pending.pop()
        classes.add(cls)
        pending += cls.__subclasses__()
    return classes


def hook_wrapper_loads(optimizer: Any) -> int:
    """Makes every wrapper of ``optimizer`` not hooked yet check a file before it loads it.

    The wrappers are found on the heap (``gc``), youngest generation first: a
    wrapper that signalled just now is among the few hundred objects created
    since the last collection, so the search usually stops there (well under
    a millisecond); an older one (``introspect`` of a wrapped optimizer), or
    none, costs a scan of every object (0.1 to 0.3 seconds with TensorFlow or
    torch loaded). Returns how many were hooked.
    """
    is_wrapper = _wrapper_classes().__contains__
    for generation in range(3):
        objects = gc.get_objects(generation)
        # Filtered in C (a Python loop over every object costs several times
        # more); by type(), not isinstance, so that nothing of theirs runs.
        wrappers = itertools.compress(objects, map(is_wrapper, map(type, objects)))
        found = [
            candidate
            for candidate in wrappers
            if vars(candidate).get(WRAPPED_CHILD) is optimizer
            and not (
                isinstance(hook := vars(candidate).get(WRAPPER_LOAD), CheckedWrapperLoad)
                and hook.wraps(optimizer)
            )
        ]
        for wrapper in found:
            # Straight into the instance's __dict__: no tracking (TensorFlow's
            # AutoTrackable, Keras's Tracker) ever sees it.
            vars(wrapper)[WRAPPER_LOAD] = CheckedWrapperLoad(wrapper, optimizer)
        if found:
            return len(found)
    return 0


def wrapper_own_variables(wrapper: Any) -> list[Any]:
    """The wrapper's own variables (step counter, loss scale ...), without the wrapped ones."""
    return list(wrapper._variables)


def wrapper_variables(wrapper: Any) -> list[Any]:
    """What the wrapper's load assigns: its own variables, then the wrapped optimizer's."""
    return [*wrapper_own_variables(wrapper), *getattr(wrapper, WRAPPED_CHILD)._listed_variables()]


def is_traced(value: Any) -> bool:
    """Whether ``value`` is symbolic: inside ``tf.function`` / XLA or ``jax.jit``."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    if backend == "jax":
        import jax

        return isinstance(value, jax.core.Tracer)
    return False


def default_name(optimizer_class: type) -> str:
    """The name Keras gives an unnamed optimizer of ``optimizer_class``."""
    from keras.src.utils.naming import auto_name

    return str(auto_name(optimizer_class.__name__))


def unnumbered_default_name(optimizer_class: type) -> str:
    """The default name of ``optimizer_class`` before Keras numbers it (``sgd``)."""
    from keras.src.utils.naming import to_snake_case

    return str(to_snake_case(optimizer_class.__name__))


def learning_rate_source(optimizer: Any) -> Any:
    """What the optimizer's learning rate comes from: schedule, callable or variable."""
    return optimizer._learning_rate


def store_entry_path(store: Any) -> str | None:
    """The group a Keras weights store points at (``H5IOStore._h5_entry_path``), if any."""
    path = getattr(store, "_h5_entry_path", None)
    return None if path is None else str(path)


def point_store(store: Any, path: str | None, child: str | None = None) -> None:
    """Points a Keras HDF5 store at group ``path``, or at its attribute ``child``'s group.

    ``H5IOStore.get(path)`` moves the store, which then reads that group's
    entries (``keys()``, ``store[key]``).
    """
    if child is not None:
        path = f"{path}/{child}" if path else child
    store.get(path)


def describe_store(store: Any) -> str:
    """Names the file behind a Keras weights store, for error messages."""
    archive = getattr(store, "archive", None)
    inner = getattr(store, "path_or_io", None)
    if inner is None:  # ShardedH5IOStore: the .weights.json its shards are listed in
        inner = getattr(store, "path", None)
    entry = store_entry_path(store)
    if archive is not None and getattr(archive, "filename", None):
        where = f"{archive.filename} (member {inner})"
    elif isinstance(inner, io.IOBase):
        # load_model reads the weights member of a .keras archive into memory.
        where = "the .keras file being loaded (its model.weights.h5)"
    elif inner is not None:
        where = str(inner)
    else:
        where = f"<{type(store).__name__}>"
    if entry:
        where += f", group '{entry}'"
    return where


@contextlib.contextmanager
def eager_scope() -> Iterator[None]:
    """Leaves any function being traced, so assignments run once, now.

    Optimizers are often built while ``fit`` traces its train function; state
    loaded before that must be written eagerly, not baked into every step.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.init_scope():
            yield
    else:
        yield


def foreign_strategy(optimizer: Any) -> Any:
    """The multi-replica tf.distribute strategy running this update, if not the optimizer's.

    Keras records the strategy an optimizer was created under
    (``_distribution_strategy``). Built outside ``strategy.scope()`` and then
    applied inside ``strategy.run``, a plain Keras optimizer applies every
    replica's update separately (``iterations`` advances once per replica).
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    own = getattr(optimizer, "_distribution_strategy", None)
    current = tf.distribute.get_strategy()
    if own is None or current is own or current.num_replicas_in_sync <= 1:
        return None
    return current


def checkpoint_waits_for(trackable: Any, name: str) -> bool:
    """Whether a tf.train.Checkpoint restored earlier holds a child ``name`` of it.

    TensorFlow keeps children a checkpoint holds but the object lacks in
    ``_deferred_dependencies`` (checked against TensorFlow 2.20 and 2.21), and
    restores them when they are created; it asks for them by name through
    ``_lookup_dependency`` first.
    """
    return name in (getattr(trackable, "_deferred_dependencies", None) or {})


def strategy_scope(optimizer: Any) -> contextlib.AbstractContextManager[Any]:
    """The scope of the tf.distribute strategy the optimizer was created under.

    Variables added to an optimizer after it was built must be created under
    the same strategy as its own (mirrored the same way).
    """
    strategy = getattr(optimizer, "_distribution_strategy", None)
    if strategy is None:
        return contextlib.nullcontext()
    return strategy.scope()  # type: ignore[no-any-return]


# TensorFlow's checkpointing internals (checked against TensorFlow 2.20 and
# 2.21). Keras keeps optimizer variables in the list ``_variables``, which
# checkpoints name by position (``_variables/N``); a variable saves its value
# as attribute ``VARIABLE_VALUE``. Values a restore holds for positions that
# do not exist yet wait in that list's ``_deferred_dependencies`` (name ->
# CheckpointPosition list) until ``build`` appends variables there.
VARIABLES_CHILD = "_variables"
VARIABLE_ATTRIBUTE = "VARIABLE_VALUE"
MANIFEST_ATTRIBUTE = "MANIFEST"  # ours: the manifest's checkpoint attribute

if keras.backend.backend() == "tensorflow":
    import tensorflow as _tf

    Trackable: Any = _tf.__internal__.tracking.Trackable
else:
    Trackable = object


def _deferred(optimizer: Any, child: str | None = VARIABLES_CHILD) -> dict[str, Any]:
    holder = optimizer if child is None else getattr(optimizer, child, None)
    waiting = getattr(holder, "_deferred_dependencies", None)
    return waiting if waiting is not None else {}


def waiting_checkpoint_values(trackable: Any) -> dict[str, Any]:
    """The variable values a restored tf.train.Checkpoint holds for children ``trackable`` lacks."""
    if keras.backend.backend() != "tensorflow":
        return {}
    values = {}
    for name, positions in _deferred(trackable, None).items():
        tensors = positions[0].value_tensors() if positions else {}
        if set(tensors) == {VARIABLE_ATTRIBUTE}:
            values[name] = np.asarray(tensors[VARIABLE_ATTRIBUTE].numpy())
    return values


def waiting_checkpoint_slots(optimizer: Any) -> dict[int, Any]:
    """The values a restored tf.train.Checkpoint holds for positions the optimizer lacks."""
    values = waiting_checkpoint_values(getattr(optimizer, VARIABLES_CHILD, None))
    if not all(name.isdigit() for name in values):
        return {}  # not list positions: left to TensorFlow
    return {int(name): value for name, value in values.items()}


def drop_waiting_checkpoint_slots(optimizer: Any, holders: dict[int, Any] | None = None) -> None:
    """Forgets what a restored checkpoint holds for positions the optimizer lacks.

    ``holders``: objects that took the values over, by position; each is
    bound to its checkpoint entry as restored (``CheckpointPosition.bind_object``
    and the restore's uid), so the restore's status (``assert_consumed``,
    ``assert_existing_objects_matched``, the warning at exit) counts them.
    """
    drop_waiting_checkpoint_values(
        getattr(optimizer, VARIABLES_CHILD, None),
        None if holders is None else {str(k): v for k, v in holders.items()},
    )


def drop_waiting_checkpoint_values(trackable: Any, holders: dict[str, Any] | None = None) -> None:
    """``drop_waiting_checkpoint_slots`` for the named children of any trackable."""
    waiting = _deferred(trackable, None)
    for name, positions in waiting.items():
        holder = None if holders is None else holders.get(name)
        if holder is None:
            continue
        for position in positions:
            position.bind_object(holder)
            holder._update_uid = position.checkpoint.restore_uid
        holder.checkpoint_positions = list(positions)
    waiting.clear()


def initialize_trackable(trackable: Any) -> None:
    """Sets up the bookkeeping of a Trackable whose ``__init__`` does not call Trackable's.

    ``Trackable`` has no constructor of its own; its attributes are created
    on first need by ``_maybe_initialize_trackable``.
    """
    trackable._maybe_initialize_trackable()


def rebind_checkpoint_value(holder: Any, variable: Any) -> None:
    """Binds the checkpoint entries a holder took over to the variable that now has the value.

    The restore's status then counts the variable as restored, as if
    TensorFlow had restored it itself at ``build``.
    """
    for position in getattr(holder, "checkpoint_positions", ()):
        checkpoint = position.checkpoint
        checkpoint.object_by_proto_id[position.proto_id] = variable
        checkpoint.all_python_objects.add(variable)
        initialize_trackable(variable)
        variable._update_uid = checkpoint.restore_uid


def read_child_group(store: Any, child: str) -> dict[str, Any]:
    """The entries of attribute ``child``'s group, next to the store's own group.

    Keras hands ``load_own_variables`` one store, pointed at the optimizer's
    group (``H5IOStore.get(path)`` moves it; ``_h5_entry_path`` is where it
    points). Reading the state's group from there lets the optimizer check
    everything before it assigns anything; the store is pointed back after.
    """
    path = store_entry_path(store)
    if path is None or not callable(getattr(store, "get", None)):
        raise TypeError(
            "introspect_opt reads optimizer state from Keras's HDF5 weights "
            f"(.keras, .weights.h5); received a {type(store).__name__}."
        )
    try:
        point_store(store, path, child)
        return {key: store[key] for key in list(store.keys())}
    finally:
        point_store(store, path)
