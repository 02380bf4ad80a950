"""Every use of Keras internals, in one place.

Keras 3 has no public hook for "the learning rate an update applied", for
"walk this object when saving a ``.keras`` file", or for "evaluate the rate
at another step". Each function below wraps exactly one private name. They were
checked against Keras 3.15.0 and 3.15.1 (TensorFlow 2.20 and 2.21);
``tests/test_keras_private.py`` fails loudly when a Keras release changes any
of them.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from typing import Any

import keras
from keras.src.optimizers.schedules import learning_rate_schedule

# ``_walk_saveable`` in keras/src/saving/saving_lib.py saves and loads every
# attribute of an optimizer that is an instance of this class, each in a group
# of its own. That is how the cached rate travels in ``.keras`` and
# ``.weights.h5`` files without changing the optimizer's own variable count,
# which plain Keras optimizers insist on.
from keras.src.saving.keras_saveable import KerasSaveable as KerasSaveable

# The method that every Keras backend calls once per *applied* update with the
# exact learning-rate value it hands to ``update_step`` (inside the
# gradient-accumulation branch that really updates; never on skipped steps).
UPDATE_STEP_HOOK = "_backend_update_step"

# TensorFlow's checkpointing protocol (checked against TensorFlow 2.20 and
# 2.21): ``tf.train.Checkpoint`` lists an object's children through this
# method before it restores them (restore.py, _queue_children_for_restoration:
# called without arguments) and before it saves them (trackable_view.py:
# called with the save type). The mixin overrides it on the TensorFlow
# backend: before a save, state waiting for ``build`` is built in where safe;
# before a restore, a file load still queued is superseded (see _persistence).
TF_CHILDREN_HOOK = "_trackable_children"


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


def _local_of(function: Any, name: str) -> Any:
    """Local ``name`` of the innermost running call of ``function``, or None."""
    code = function.__code__
    frame: Any = sys._getframe(2)
    while frame is not None:
        if frame.f_code is code:
            return frame.f_locals.get(name)
        frame = frame.f_back
    return None


# A ``LossScaleOptimizer`` saves and loads the variables of the optimizer it
# wraps in its own group too, by position (``BaseOptimizer.load_own_variables``,
# which it inherits), *before* Keras loads the wrapped optimizer's own group.
# That inherited method reads ``self.variables`` (the wrapper's, then the
# wrapped optimizer's) before it assigns anything, so the wrapped optimizer
# sees the load coming and can check the whole file first (_persistence).
_WRAPPER_LOAD_CODE = keras.optimizers.LossScaleOptimizer.load_own_variables.__code__
WRAPPED_CHILD = "inner_optimizer"  # the wrapped optimizer's group, in the wrapper's
# A LossScaleOptimizer's own variables before ``build`` (iterations, learning
# rate); ``build`` adds the step counter and the loss scale.
WRAPPER_VARIABLES_BEFORE_BUILD = 2
LOSS_SCALE_VARIABLE = "dynamic_scale"  # the name of its loss-scale variable


def wrapper_loading(optimizer: Any) -> tuple[Any, Any] | None:
    """``(wrapper, store)`` while a ``LossScaleOptimizer`` that wraps ``optimizer`` loads.

    Called from the wrapped optimizer's ``variables``: true only when that
    read comes from the wrapper's ``load_own_variables`` (two or three frames
    up: the wrapper's ``variables`` property sits between them).
    """
    frame: Any = sys._getframe(2)
    for _ in range(3):
        if frame is None:
            return None
        if frame.f_code is _WRAPPER_LOAD_CODE:
            wrapper = frame.f_locals.get("self")
            store = frame.f_locals.get("store")
            if getattr(wrapper, WRAPPED_CHILD, None) is not optimizer or not hasattr(
                store, "_h5_entry_path"
            ):
                return None  # another caller, or a store we cannot read ahead
            return wrapper, store
        frame = frame.f_back
    return None


def wrapper_own_variables(wrapper: Any) -> list[Any]:
    """The wrapper's own variables (step counter, loss scale ...), without the wrapped ones."""
    return list(wrapper._variables)


def wrapper_variables(wrapper: Any) -> list[Any]:
    """What the wrapper's load assigns: its own variables, then the wrapped optimizer's."""
    return [*wrapper_own_variables(wrapper), *getattr(wrapper, WRAPPED_CHILD)._listed_variables()]


def keras_load_skips_mismatches() -> bool:
    """Whether the Keras load running now was asked to skip mismatches.

    ``load_weights(..., skip_mismatch=True)`` reaches ``load_own_variables``
    only through ``saving_lib._load_state(..., skip_mismatch=...)``; the flag
    itself is not passed on. State that can only be checked later (when the
    optimizer is built) must still honour it.
    """
    from keras.src.saving import saving_lib

    return bool(_local_of(saving_lib._load_state, "skip_mismatch"))


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


def describe_store(store: Any) -> str:
    """Names the file behind a Keras weights store, for error messages."""
    archive = getattr(store, "archive", None)
    inner = getattr(store, "path_or_io", None)
    if inner is None:  # ShardedH5IOStore: the .weights.json its shards are listed in
        inner = getattr(store, "path", None)
    entry = getattr(store, "_h5_entry_path", None)
    if archive is not None and getattr(archive, "filename", None):
        where = f"{archive.filename} (member {inner})"
    elif isinstance(inner, io.IOBase):
        # load_model reads the weights member of a .keras archive into memory;
        # the file it opened is a local of saving_lib.load_model.
        where = f"{_file_being_loaded() or 'the model file being loaded'} (its model.weights.h5)"
    elif inner is not None:
        where = str(inner)
    else:
        where = f"<{type(store).__name__}>"
    if entry:
        where += f", group '{entry}'"
    return where


def _file_being_loaded() -> str | None:
    """The path ``keras.saving.load_model`` is loading, from its frame (or None)."""
    from keras.src.saving import saving_lib

    path = _local_of(saving_lib.load_model, "filepath")
    return None if path is None else str(path)


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


def checkpoint_slots_waiting(optimizer: Any) -> int:
    """How many optimizer variables a tf.train.Checkpoint holds for this one that it lacks.

    TensorFlow keeps the values of list entries it could not match yet in the
    ``_deferred_dependencies`` of Keras's ``_variables`` list (positions
    ``_variables/N``) until ``build`` appends those variables.
    """
    if keras.backend.backend() != "tensorflow":
        return 0
    waiting = getattr(getattr(optimizer, "_variables", None), "_deferred_dependencies", None)
    return len(waiting or {})


def read_child_group(store: Any, child: str) -> dict[str, Any]:
    """The entries of attribute ``child``'s group, next to the store's own group.

    Keras hands ``load_own_variables`` one store, pointed at the optimizer's
    group (``H5IOStore.get(path)`` moves it; ``_h5_entry_path`` is where it
    points). Reading the state's group from there lets the optimizer check
    everything before it assigns anything; the store is pointed back after.
    """
    path = getattr(store, "_h5_entry_path", None)
    if path is None or not callable(getattr(store, "get", None)):
        raise TypeError(
            "introspect_opt reads optimizer state from Keras's HDF5 weights "
            f"(.keras, .weights.h5); received a {type(store).__name__}."
        )
    child_path = f"{path}/{child}" if path else child
    try:
        store.get(child_path)
        return {key: store[key] for key in list(store.keys())}
    finally:
        store.get(path)


def _models_in(value: Any) -> list[Any]:
    """Keras models held by ``value``: itself, or the children of a TF checkpoint."""
    if isinstance(value, keras.Model):
        return [value]
    if type(value).__name__ not in ("Checkpoint", "CheckpointManager"):
        return []
    found = []
    for child in list(vars(value).values()):
        if isinstance(child, keras.Model):
            found.append(child)
        elif type(child).__name__ == "Checkpoint":
            found += [c for c in vars(child).values() if isinstance(c, keras.Model)]
    return found


def owning_model(optimizer: Any) -> Any:
    """The built model that trains ``optimizer``, found on the call stack; or None.

    Loading and saving reach an optimizer through its model without telling it
    which one: ``saving_lib._load_state`` / ``_save_state`` walk down from the
    model they were given, ``tf.train.Checkpoint`` from the objects it holds.
    Those are local variables of the frames that called us, so the model
    whose ``optimizer`` (or its ``inner_optimizer``) *is* this optimizer is
    found there. None when there is none, when it is not built, or when
    several models with different variables share the optimizer.
    """
    seen: set[int] = set()
    matches: list[Any] = []
    frame: Any = sys._getframe(1)
    depth = 0
    while frame is not None and depth < 200:
        for value in list(frame.f_locals.values()):
            for model in _models_in(value):
                if id(model) in seen:
                    continue
                seen.add(id(model))
                held = getattr(model, "optimizer", None)
                if held is optimizer or getattr(held, "inner_optimizer", None) is optimizer:
                    matches.append(model)
        frame = frame.f_back
        depth += 1
    built = [m for m in matches if m.built]
    if not built:
        return None
    variables = [[id(v) for v in m.trainable_variables] for m in built]
    if any(v != variables[0] for v in variables):
        return None
    return built[0]
