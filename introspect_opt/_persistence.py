"""Loading optimizer state all or nothing, and saving all of it, on every path.

Keras skips *all* optimizer state, with only a warning, when the number of
saved variables differs from the optimizer's. An introspectable optimizer
reads everything a file holds for it (its own numbered entries and the
state's group) and checks names, shapes and dtypes before it assigns
anything: a load either restores everything or raises an error that names the
file, the optimizer and the fix, and changes nothing.

State for variables that do not exist yet never waits where a save could miss
it. An optimizer that is not built has no slots. When a file brings state for
them and the model that trains the optimizer is in sight (found with
``_keras_private.owning_model``) and a build for its variables gives exactly
the file's layout, the optimizer is built then, as ``fit`` would build it, and
the state is checked and assigned in full. Otherwise (an optimizer outside
any model, or one that trains part of its model in a custom loop) the slots
wait in a queue (:class:`Pending`) until ``build``, which checks them; every
Keras save path writes the queue, and a ``tf.train.Checkpoint`` save builds
the optimizer first where that is safe. A ``tf.train.Checkpoint`` restored
into an unbuilt optimizer leaves its slots inside TensorFlow until ``build``,
as for plain Keras; a Keras save then builds it first where safe, or refuses.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from typing import Any

import keras
import numpy as np

from . import _keras_private
from ._keras_private import WRAPPER_VARIABLES_BEFORE_BUILD
from ._state import AppliedRateState, Entries, check_entries, host_array, is_number_array

STATE_ATTRIBUTE = "_introspection_state"
# What h5py raises for an entry it cannot read (a bad chunk, an empty dataset).
_READ_ERRORS = (OSError, TypeError, KeyError, RuntimeError)

FIX = (
    "Create the optimizer with the same class and arguments as the one that "
    "wrote the file (for example the same `momentum`, `use_ema` and "
    "`gradient_accumulation_steps`) for the same model; or, with "
    "`model.load_weights(path, skip_mismatch=True)`, load the model weights and "
    "keep this optimizer's current state."
)


@dataclasses.dataclass(frozen=True)
class FileState:
    """Everything a Keras file holds for one optimizer, checked."""

    source: str
    values: list[np.ndarray]  # the optimizer's own numbered entries, in order
    entries: Entries | None  # the state's group; None: a plain optimizer's file


@dataclasses.dataclass(frozen=True)
class Pending:
    """A file's state for an optimizer outside any model, waiting for its build."""

    source: str
    slots: list[np.ndarray]  # the values after the prefix
    entries: Entries | None
    previous: list[np.ndarray]  # the prefix just before this load (rollback)
    lenient: bool  # loaded under `load_weights(..., skip_mismatch=True)`
    earlier: Pending | None = None  # the queued load this one superseded


def _describe(optimizer: Any) -> str:
    return f"{type(optimizer).__name__} '{optimizer.name}'"


def read_file(optimizer: Any, store: Any) -> FileState:
    """Reads and checks the optimizer's entries and the state's group of a file."""
    source = _keras_private.describe_store(store)
    values = _read_numbered(optimizer, store, source)
    try:
        group = _keras_private.read_child_group(store, STATE_ATTRIBUTE)
    except _READ_ERRORS as error:
        raise _unreadable(optimizer, source, error) from error
    return FileState(source, values, check_entries(group, source))


def _unreadable(optimizer: Any, source: str, error: BaseException) -> ValueError:
    """h5py's own error for an entry it cannot read (a bad chunk, an empty dataset), named."""
    return ValueError(
        f"Cannot restore {_describe(optimizer)} from {source}: an entry could not be "
        f"read ({type(error).__name__}: {error}). The file is damaged; nothing was "
        f"loaded into the optimizer. {FIX}"
    )


def _read_numbered(optimizer: Any, store: Any, source: str) -> list[np.ndarray]:
    """The numbered entries Keras writes for an optimizer, checked to be numbers."""
    keys = set(store.keys())
    if keys != {str(i) for i in range(len(keys))}:
        raise ValueError(
            f"Cannot restore {_describe(optimizer)} from {source}: its optimizer "
            f"entries are {sorted(keys)}, not the numbered entries 0..N-1 Keras "
            "writes: an entry is missing or renamed, so the file is damaged (or not "
            f"written by a Keras optimizer); nothing was loaded into the optimizer. {FIX}"
        )
    try:
        values = [np.asarray(store[str(i)]) for i in range(len(keys))]
    except _READ_ERRORS as error:
        raise _unreadable(optimizer, source, error) from error
    for index, value in enumerate(values):
        if not is_number_array(value):
            raise ValueError(
                f"Cannot restore {_describe(optimizer)} from {source}: optimizer "
                f"entry {index} holds {value.dtype} data, not numbers. The file is "
                f"damaged; nothing was loaded into the optimizer. {FIX}"
            )
    return values


def _prefix_count(optimizer: Any) -> int:
    """How many variables an optimizer has before it is built.

    Keras creates the step counter, then (for a float rate) the rate variable,
    in ``__init__``; ``build`` appends every slot after them.
    """
    return 1 + int(_keras_private.has_rate_variable(optimizer))


def _mismatch(optimizer: Any, variables: list[Any], values: list[np.ndarray], source: str) -> str:
    """Why ``values`` cannot be assigned to ``variables``; empty if they can."""
    if len(values) != len(variables):
        state = "built" if optimizer.built else "not built yet"
        return (
            f"Cannot restore {_describe(optimizer)} ({state}) from {source}: the "
            f"file holds {len(values)} optimizer variables, this optimizer has "
            f"{len(variables)}. Plain Keras would skip all optimizer state here "
            f"with only a warning; nothing was loaded into the optimizer."
        )
    for index, (variable, value) in enumerate(zip(variables, values, strict=True)):
        if tuple(variable.shape) != tuple(value.shape):
            return (
                f"Cannot restore {_describe(optimizer)} from {source}: optimizer "
                f"variable {index} ('{variable.path}') has shape "
                f"{tuple(variable.shape)}, the file holds shape "
                f"{tuple(value.shape)}. Nothing was loaded into the optimizer."
            )
        wants_int = keras.backend.standardize_dtype(variable.dtype).startswith(("int", "uint"))
        if wants_int != (value.dtype.kind in "iu"):
            return (
                f"Cannot restore {_describe(optimizer)} from {source}: optimizer "
                f"variable {index} ('{variable.path}') holds "
                f"{'integers' if wants_int else 'floats'}, the file holds "
                f"{value.dtype}. Nothing was loaded into the optimizer."
            )
    return ""


def _numpy(variables: list[Any]) -> list[np.ndarray]:
    with _keras_private.eager_scope():  # build() may run while fit traces
        return [np.array(host_array(v)) for v in variables]


def _assign(variables: list[Any], values: list[np.ndarray]) -> None:
    with _keras_private.eager_scope():
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)


def _base_class(optimizer: Any) -> Any:
    """The Keras class behind an introspectable one (no cache state to build)."""
    return type(optimizer)._introspect_base


def layout_for(optimizer: Any, variables: list[Any]) -> list[tuple[int, ...]] | None:
    """The shapes ``optimizer.build(variables)`` would give its variables, or None.

    Found by building a copy of the plain Keras optimizer inside a
    ``keras.StatelessScope``, where variables get shapes but no memory; None
    where that cannot be done (a few optimizers create variables from values).
    """
    try:
        copy = _base_class(optimizer).from_config(optimizer.get_config())
        with keras.StatelessScope():
            copy.build(variables)
        return [tuple(v.shape) for v in copy.variables]
    except Exception:  # any failure: the layout stays unknown
        return None


def build_for_model(
    optimizer: Any, values: list[np.ndarray] | None = None, count: int | None = None
) -> bool:
    """Builds an unbuilt optimizer for the model that trains it, where that is safe.

    Safe means: the model is found (``_keras_private.owning_model``) and a
    build for its ``trainable_variables`` gives exactly the layout of the
    state waiting for it (``values`` from a file, or ``count`` entries a
    checkpoint holds). An optimizer that trains only part of its model (a
    custom loop) gets another layout, and is left to build on the variables
    it is given. Returns whether the optimizer is built.
    """
    if optimizer.built:
        return True
    model = _keras_private.owning_model(optimizer)
    if model is None:
        return False
    layout = layout_for(optimizer, model.trainable_variables)
    if layout is None:
        return False
    if values is not None and [tuple(v.shape) for v in values] != layout:
        early = _was_saved_before_build(optimizer, values) and len(values) <= len(layout)
        if not early:
            return False
    if count is not None and count != len(layout):
        return False
    with _keras_private.eager_scope(), _keras_private.strategy_scope(optimizer):
        optimizer.build(model.trainable_variables)
    return True


def _waiting_count(optimizer: Any, state: AppliedRateState) -> int | None:
    """How many variables the state waiting for build fills (None: nothing waits)."""
    if state.pending is not None and state.pending.slots:
        return _prefix_count(optimizer) + len(state.pending.slots)
    waiting = _keras_private.checkpoint_slots_waiting(optimizer)
    return len(optimizer._plain_variables()) + waiting if waiting else None


def before_checkpoint(optimizer: Any, restoring: bool) -> None:
    """Before tf.train.Checkpoint lists the optimizer's variables.

    Restoring: a newer checkpoint supersedes a file load still queued.
    Saving: state waiting for the build is built in where safe, else a
    warning says the checkpoint will lack it.
    """
    state = optimizer._ensure_introspection_state()
    if restoring:
        if state.pending is not None:
            state.pending = None  # the checkpoint being restored is newer
        return
    count = _waiting_count(optimizer, state)
    if count is None or build_for_model(optimizer, count=count):
        return
    what = (
        f"loaded from {state.pending.source}"
        if state.pending is not None
        else "restored by a tf.train.Checkpoint"
    )
    warnings.warn(
        f"{_describe(optimizer)} holds state for slots it has not built yet ({what}), "
        "and no model whose variables match it is in sight: the tf.train.Checkpoint "
        "being saved holds its step counter but not those slots. Build it first, with "
        "`optimizer.build(variables)` for the variables it trains.",
        stacklevel=5,
    )


def check_wrapper_load(optimizer: Any, state: AppliedRateState, wrapper: Any, store: Any) -> None:
    """Checks a file before the ``LossScaleOptimizer`` wrapping ``optimizer`` loads it.

    The wrapper assigns its own variables and ``optimizer``'s by position
    from its group, before Keras hands ``optimizer`` its own group (see
    ``_keras_private.wrapper_loading``). Everything either load would assign
    is checked here first: a damaged file raises before anything changes, and
    ``optimizer``'s own load of the same file then refuses too.

    When the wrapper's group has another length than the wrapper has
    variables (written on another backend, by a plain optimizer on JAX, or
    with other features), Keras skips that group with a warning; the
    wrapped optimizer's own group restores it, and the wrapper's own state
    (loss scale, step counter) is restored here from the group's first
    entries.
    """
    checked = state.wrapper_check
    if checked is not None and checked[0]() is store and checked[1] is None:
        return  # Keras reads `variables` twice per load: the file was checked already
    path = store._h5_entry_path
    child = _keras_private.WRAPPED_CHILD
    state.wrapper_check = (weakref.ref(store), None)
    source = _keras_private.describe_store(store)
    own = _keras_private.wrapper_own_variables(wrapper)
    own_values: list[np.ndarray] = []
    try:
        values = _read_numbered(wrapper, store, source)
        variables = _keras_private.wrapper_variables(wrapper)
        store.get(f"{path}/{child}" if path else child)
        file = read_file(optimizer, store)
        if values and not file.values:
            raise ValueError(
                f"Cannot restore {_describe(wrapper)} from {source}: the file holds "
                f"state for an optimizer but none for the one it wraps (group "
                f"'{child}'): it was written without loss scaling (under another "
                "dtype policy than mixed_float16), or that group is missing. Nothing "
                "was loaded into the optimizer. Load it under the dtype policy that "
                "wrote it; or, with `model.load_weights(path, skip_mismatch=True)`, "
                "load the model weights and keep this optimizer's current state."
            )
        if len(values) == len(variables):
            problem = _mismatch(wrapper, variables, values, source)
            if not problem and file.values:
                _writer_own_count(wrapper, values, file, source, [len(own)])
            own_assigned = values[: len(own)]
        elif file.values and wrapper.built:
            # Keras skips a group of another length (a warning); its own state from here.
            count = _writer_own_count(
                wrapper, values, file, source, [len(own), WRAPPER_VARIABLES_BEFORE_BUILD]
            )
            own_values = values[:count] if count == len(own) else []
            problem = _mismatch(wrapper, own, own_values, source) if own_values else ""
            own_assigned = own_values
        else:
            problem = ""  # Keras skips the group of a wrapper not built yet (a warning)
            own_assigned = []
        if problem:
            raise ValueError(f"{problem} {FIX}")
        _check_loss_scale(wrapper, own, own_assigned, source)
        if file.values and optimizer.built:
            _check(optimizer, file.values, file.source)
        elif file.values:
            _check_prefix(optimizer, file)
    except ValueError as error:
        state.wrapper_check = (weakref.ref(store), str(error))
        raise
    except Exception as error:  # h5py's own, for an entry it cannot read
        named = _unreadable(wrapper, source, error)
        state.wrapper_check = (weakref.ref(store), str(named))
        raise named from error
    finally:
        store.get(path)
    if own_values:  # Keras skips the group of this length: its own state from here
        _assign(own, own_values)


def _writer_own_count(
    wrapper: Any, values: list[np.ndarray], file: FileState, source: str, counts: list[int]
) -> int:
    """How many of the wrapper group's entries are the writer's own; raises if none fits.

    The group holds the writer's own variables (all of them if it was built,
    fewer if not), then a copy of the wrapped optimizer's own group
    (``file``) entry for entry, then, written on JAX, the state's entries.
    Only a count under which that copy matches bit for bit is the file's
    layout: anything else is damage.
    """
    wrapped = len(file.values)
    trailing = (0, len(file.entries or {}))
    for count in counts:
        copy = values[count : count + wrapped]
        if len(values) - count - wrapped in trailing and all(
            a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            for a, b in zip(copy, file.values, strict=True)
        ):
            return count
    raise ValueError(
        f"Cannot restore {_describe(wrapper)} from {source}: its group holds "
        f"{len(values)} entries, and they are not its own followed by a copy of the "
        f"{wrapped} entries of the optimizer it wraps (group "
        f"'{_keras_private.WRAPPED_CHILD}'): an entry is missing, extra, moved or "
        f"changed, so the file is damaged. Nothing was loaded into the optimizer. {FIX}"
    )


def _check_loss_scale(wrapper: Any, own: list[Any], values: list[np.ndarray], source: str) -> None:
    """Refuses a loss scale that no training can have reached: not finite, or not above 0."""
    for variable, value in zip(own, values, strict=False):
        if variable.name == _keras_private.LOSS_SCALE_VARIABLE and not (
            np.all(np.isfinite(value)) and np.all(value > 0)
        ):
            raise ValueError(
                f"Cannot restore {_describe(wrapper)} from {source}: its loss scale "
                f"('{variable.path}') would be {value}; a loss scale is finite and "
                f"above 0, so the file is damaged. Nothing was loaded into the "
                f"optimizer. {FIX}"
            )


def load(optimizer: Any, state: AppliedRateState, store: Any) -> None:
    """Replaces ``Optimizer.load_own_variables``: everything, or an error and no change."""
    refused, state.wrapper_check = state.wrapper_check, None
    if refused is not None and refused[0]() is store and refused[1] is not None:
        raise ValueError(
            f"Cannot restore {_describe(optimizer)} from "
            f"{_keras_private.describe_store(store)}: the LossScaleOptimizer that wraps it "
            f"refused the same file, so nothing was loaded into the optimizer. Its "
            f"reason: {refused[1]}"
        )
    file = read_file(optimizer, store)
    if not file.values:
        warnings.warn(
            f"{file.source} holds no state for {_describe(optimizer)} (the model "
            "was saved before it was compiled). The optimizer keeps its current "
            "state.",
            stacklevel=3,
        )
        return
    if not optimizer.built:
        # For its model, if the file fits what that build creates; else the
        # slots wait for the build on the variables it trains (checked then).
        build_for_model(optimizer, values=file.values)
    if optimizer.built:
        try:
            _check(optimizer, file.values, file.source)
        except ValueError as error:
            raise ValueError(f"{error}{_loss_scaling_hint(store)}") from None
        _assign(optimizer._plain_variables()[: len(file.values)], file.values)
        state.assign_entries(optimizer, file.entries)
        return
    # Not built and no model to build it for (an unpickled optimizer, say):
    # restore the step counter (and rate) now, check and assign the rest at
    # build().
    prefix_count = _check_prefix(optimizer, file)
    prefix = optimizer._plain_variables()[:prefix_count]
    state.pending = Pending(
        source=file.source,
        slots=file.values[prefix_count:],
        entries=file.entries,
        previous=_numpy(prefix),
        lenient=_keras_private.keras_load_skips_mismatches(),
        earlier=state.pending,
    )
    _assign(prefix, file.values[:prefix_count])


def _loss_scaling_hint(store: Any) -> str:
    """A hint when the file's optimizer was wrapped in a LossScaleOptimizer and this one is not."""
    try:
        wrapped = _keras_private.read_child_group(store, _keras_private.WRAPPED_CHILD)
    except _READ_ERRORS:
        return ""
    if not wrapped:
        return ""
    return (
        " The file was written under mixed precision (a LossScaleOptimizer wrapped "
        'the optimizer): call `keras.config.set_dtype_policy("mixed_float16")` '
        "before building and loading the model."
    )


def _check_prefix(optimizer: Any, file: FileState) -> int:
    """Raises unless the file fits the variables an unbuilt optimizer has; returns their count."""
    prefix_count = _prefix_count(optimizer)
    prefix = optimizer._plain_variables()[:prefix_count]
    problem = _mismatch(optimizer, prefix, file.values[:prefix_count], file.source)
    if problem or len(file.values) < prefix_count:
        problem = problem or _mismatch(optimizer, prefix, file.values, file.source)
        raise ValueError(f"{problem} {FIX}")
    return prefix_count


def _check(optimizer: Any, values: list[np.ndarray], source: str, note: str = "") -> None:
    """Raises unless ``values`` fit the built optimizer's variables, in full.

    One exception: a file written after ``compile`` and before any training
    holds only the variables that exist before ``build`` (the step counter,
    the rate); into an optimizer that has not trained either it fits, since
    the slots are at their initial values on both sides.
    """
    variables = optimizer._plain_variables()
    problem = _mismatch(optimizer, variables, values, source)
    if problem and _was_saved_before_build(optimizer, values):
        problem = _mismatch(optimizer, variables[: len(values)], values, source)
    if problem:
        raise ValueError(f"{problem}{note} {FIX}")


def _was_saved_before_build(optimizer: Any, values: list[np.ndarray]) -> bool:
    if len(values) != _prefix_count(optimizer) or values[0].shape != ():
        return False
    steps = _numpy([_keras_private.raw_step_counter(optimizer)])[0]
    return int(values[0]) == 0 and int(steps) == 0


def apply_pending(optimizer: Any, state: AppliedRateState) -> None:
    """Applies a queued file's state once the optimizer is built (from build()).

    A queued load that does not fit never happened: the step counter goes back
    to what it was before it, and the load it superseded, if any, applies.
    """
    pending, state.pending = state.pending, None
    if pending is None:
        return
    prefix = optimizer._plain_variables()[: _prefix_count(optimizer)]
    values = _numpy(prefix) + pending.slots
    try:
        _check(
            optimizer,
            values,
            pending.source,
            " (The state was loaded before the optimizer was built, so it could only "
            "be checked now; the optimizer is back to the state it had before that load.)",
        )
    except ValueError as error:
        _assign(prefix, pending.previous)
        state.pending = pending.earlier
        apply_pending(optimizer, state)
        if not pending.lenient:
            raise
        warnings.warn(
            f"{error} It was loaded with `skip_mismatch=True`, so it is skipped.",
            stacklevel=3,
        )
        return
    _assign(optimizer._plain_variables()[: len(values)], values)
    state.assign_entries(optimizer, pending.entries)


def save(optimizer: Any, state: AppliedRateState, store: Any) -> None:
    """Replaces ``Optimizer.save_own_variables``, with nothing left behind.

    An optimizer that a ``tf.train.Checkpoint`` restored before it was built
    holds its slots' values only inside TensorFlow, until it is built: it is
    built first (for the model it trains), or the save refuses to write an
    incomplete file.
    """
    waiting = _keras_private.checkpoint_slots_waiting(optimizer)
    if not optimizer.built and waiting:
        count = len(optimizer._plain_variables()) + waiting
        if not build_for_model(optimizer, count=count):
            raise ValueError(
                f"Cannot save {_describe(optimizer)}: a tf.train.Checkpoint was "
                "restored into it before it was built, and its slots are still "
                "waiting inside TensorFlow for the variables they belong to. "
                "Build it first, with `optimizer.build(variables)` for the variables "
                "it trains (or one training step), then save."
            )
    values = _numpy(optimizer._plain_variables())
    if state.pending is not None:
        values += state.pending.slots
    for index, value in enumerate(values):
        store[str(index)] = value


def pending_rate(state: AppliedRateState, update_count: Any) -> np.ndarray | None:
    """The rate a queued file recorded, if it belongs to ``update_count``."""
    entries = None if state.pending is None else state.pending.entries
    if not entries or int(entries["update_count"]) != int(update_count):
        return None
    rate: np.ndarray = entries["applied_learning_rate"]
    return rate
