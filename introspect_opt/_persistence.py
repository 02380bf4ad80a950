"""Loading optimizer state all or nothing, and saving all of it, on every path.

Keras skips *all* optimizer state, with only a warning, when the number of
saved variables differs from the optimizer's. An introspectable optimizer
reads everything a file holds for it (its own numbered entries and the
state's group) and checks names, shapes and dtypes before it assigns
anything: a load either restores everything or raises an error that names the
file, the optimizer and the fix, and changes nothing.

State for variables that do not exist yet never waits where a save could miss
it. An optimizer that is not built has no slots; when a file or a
``tf.train.Checkpoint`` brings state for them, the optimizer is built right
then for the model it trains (found with ``_keras_private.owning_model``), as
``fit`` would build it, and the state is checked and assigned in full. Only an
optimizer outside any model (unpickled, say) keeps a file's state queued
(:class:`Pending`) until it is built; every Keras save path writes the queue.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import keras
import numpy as np

from . import _keras_private
from ._state import AppliedRateState, Entries, check_entries

STATE_ATTRIBUTE = "_introspection_state"

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
    previous: list[np.ndarray]  # the prefix before the first queued load (rollback)
    lenient: bool  # loaded under `load_weights(..., skip_mismatch=True)`


def _describe(optimizer: Any) -> str:
    return f"{type(optimizer).__name__} '{optimizer.name}'"


def _is_number(value: np.ndarray) -> bool:
    if value.dtype.kind in "iuf":
        return True
    try:  # bfloat16 and float8 arrive as ml_dtypes
        name = keras.backend.standardize_dtype(value.dtype)
    except (ValueError, TypeError):
        return False
    return str(name).startswith(("float", "bfloat", "int", "uint"))


def read_file(optimizer: Any, store: Any) -> FileState:
    """Reads and checks the optimizer's entries and the state's group of a file."""
    source = _keras_private.describe_store(store)
    keys = set(store.keys())
    if keys != {str(i) for i in range(len(keys))}:
        raise ValueError(
            f"Cannot restore {_describe(optimizer)} from {source}: its optimizer "
            f"entries are {sorted(keys)}, not the numbered entries Keras writes. "
            f"The file was not written by a Keras optimizer; nothing was loaded "
            f"into the optimizer. {FIX}"
        )
    values = [np.asarray(store[str(i)]) for i in range(len(keys))]
    for index, value in enumerate(values):
        if not _is_number(value):
            raise ValueError(
                f"Cannot restore {_describe(optimizer)} from {source}: optimizer "
                f"entry {index} holds {value.dtype} data, not numbers. The file is "
                f"damaged; nothing was loaded into the optimizer. {FIX}"
            )
    group = _keras_private.read_child_group(store, STATE_ATTRIBUTE)
    return FileState(source, values, check_entries(group, source))


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
        if wants_int and value.dtype.kind not in "iu":
            return (
                f"Cannot restore {_describe(optimizer)} from {source}: optimizer "
                f"variable {index} ('{variable.path}') holds integers, the file "
                f"holds {value.dtype}. Nothing was loaded into the optimizer."
            )
    return ""


def _numpy(variables: list[Any]) -> list[np.ndarray]:
    with _keras_private.eager_scope():  # build() may run while fit traces
        return [np.array(_keras_private.host_value(v)) for v in variables]


def _assign(variables: list[Any], values: list[np.ndarray]) -> None:
    with _keras_private.eager_scope():
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)


def settle(optimizer: Any) -> bool:
    """Builds an unbuilt optimizer for the model it trains, if that model is known.

    Returns whether the optimizer is built. Called when state for its slots
    arrives (a file, a checkpoint) and before it is saved, so that state
    never waits where a save path could miss it.
    """
    if optimizer.built:
        return True
    model = _keras_private.owning_model(optimizer)
    if model is None:
        return False
    with _keras_private.eager_scope(), _keras_private.strategy_scope(optimizer):
        optimizer.build(model.trainable_variables)
    return True


def settle_for_checkpoint(optimizer: Any) -> None:
    """Before tf.train.Checkpoint lists the optimizer's variables (to save or restore)."""
    if settle(optimizer):
        return
    state = optimizer.__dict__.get("_introspection_state")
    queued = state is not None and state.pending is not None and state.pending.slots
    if queued or _keras_private.checkpoint_restore_waits(optimizer):
        warnings.warn(
            f"{_describe(optimizer)} holds state for slots it has not built yet "
            f"({'loaded from ' + state.pending.source if queued else 'restored by a checkpoint'}), "
            "and no model that trains it is in sight: a tf.train.Checkpoint saved now "
            "holds its step counter but not those slots. Build it first, with "
            "`optimizer.build(model.trainable_variables)`.",
            stacklevel=4,
        )


def load(optimizer: Any, state: AppliedRateState, store: Any) -> None:
    """Replaces ``Optimizer.load_own_variables``: everything, or an error and no change."""
    file = read_file(optimizer, store)
    if not file.values:
        warnings.warn(
            f"{file.source} holds no state for {_describe(optimizer)} (the model "
            "was saved before it was compiled). The optimizer keeps its current "
            "state.",
            stacklevel=3,
        )
        return
    settle(optimizer)  # builds it for its model; a mismatch below still changes no value
    if optimizer.built:
        _check(optimizer, file.values, file.source)
        _assign(optimizer._plain_variables()[: len(file.values)], file.values)
        with _keras_private.eager_scope():
            state.assign_entries(optimizer, file.entries)
        return
    # Not built and no model to build it for (an unpickled optimizer, say):
    # restore the step counter (and rate) now, check and assign the rest at
    # build().
    prefix_count = _prefix_count(optimizer)
    prefix = optimizer._plain_variables()[:prefix_count]
    problem = _mismatch(optimizer, prefix, file.values[:prefix_count], file.source)
    if problem or len(file.values) < prefix_count:
        problem = problem or _mismatch(optimizer, prefix, file.values, file.source)
        raise ValueError(f"{problem} {FIX}")
    earlier = state.pending
    state.pending = Pending(
        source=file.source,
        slots=file.values[prefix_count:],
        entries=file.entries,
        previous=earlier.previous if earlier is not None else _numpy(prefix),
        lenient=_keras_private.keras_load_skips_mismatches(),
    )
    _assign(prefix, file.values[:prefix_count])


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
    """Applies a queued file's state once the optimizer is built (from build())."""
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
            "be checked now; the step counter is back to what it was before that load.)",
        )
    except ValueError as error:
        _assign(prefix, pending.previous)  # the queued load never happened
        if not pending.lenient:
            raise
        warnings.warn(
            f"{error} It was loaded with `skip_mismatch=True`, so it is skipped and "
            "the optimizer keeps the state it had before that load.",
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
    waiting = not optimizer.built and _keras_private.checkpoint_restore_waits(optimizer)
    if waiting and not settle(optimizer):
        raise ValueError(
            f"Cannot save {_describe(optimizer)}: a tf.train.Checkpoint was "
            "restored into it before it was built, and its slots are still "
            "waiting inside TensorFlow for the variables they belong to. "
            "Build it first, with `optimizer.build(model.trainable_variables)` "
            "(or one training step), then save."
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
