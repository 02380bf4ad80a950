"""Loading optimizer state all or nothing, and saving all of it, on every path.

Keras skips *all* optimizer state, with only a warning, when the number of
saved variables differs from the optimizer's. An introspectable optimizer
reads everything a file holds for it (its own numbered entries, the state's
group and the manifest there, see ``_manifest``) and checks it before it
assigns anything: a load either restores everything or raises an error that
names the file, the optimizer and the fix, and changes nothing.

Identity is recorded, never inferred: a file with a manifest is refused at
the load when another class or slot layout wrote it, built or not, and its
slots go to the model variables they belong to. An optimizer that is not
built has no slots yet: the file's slots wait in a queue (:class:`Pending`)
until ``build``, which matches them to the variables it is given. Every save
path writes the queue: Keras files and pickle through ``save``, and
``tf.train.Checkpoint`` through ``_checkpoint``. The optimizer never looks for
the model it belongs to.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import warnings
import weakref
from typing import Any

import keras
import numpy as np

from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.compat import WRAPPER_VARIABLES_BEFORE_BUILD
from introspect_opt._keras3.persistence import manifest as _manifest
from introspect_opt._keras3.state import (
    AppliedRateState,
    Entries,
    check_entries,
    host_array,
    is_number_array,
)

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
    manifest: _manifest.Manifest | None  # None: plain Keras, or introspect-opt 0.2


@dataclasses.dataclass(frozen=True)
class Pending:
    """A file's state for an optimizer that is not built yet, waiting for its build."""

    source: str
    slots: list[np.ndarray]  # the values after the prefix
    entries: Entries | None
    manifest: _manifest.Manifest | None  # the writer's, for the whole file
    previous: list[np.ndarray]  # the prefix just before this load (rollback)
    sequence: int  # when it was queued (see ``restore_started``)
    earlier: Pending | None = None  # the queued load this one superseded


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which value goes into which optimizer variable; what starts fresh."""

    targets: list[Any]
    values: list[np.ndarray]
    fresh: list[str]  # model variables whose slots are not in the file


def _describe(optimizer: Any) -> str:
    return f"{type(optimizer).__name__} '{optimizer.name}'"


def read_file(optimizer: Any, store: Any) -> FileState:
    """Reads and checks the optimizer's entries, the state's group and the manifest of a file."""
    source = _keras_private.describe_store(store)
    values = _read_numbered(optimizer, store, source)
    try:
        group = dict(_keras_private.read_child_group(store, STATE_ATTRIBUTE))
        stored = group.pop(_manifest.MANIFEST_KEY, None)
        stored = None if stored is None else np.asarray(stored)
    except _READ_ERRORS as error:
        raise _unreadable(optimizer, source, error) from error
    manifest = None if stored is None else _manifest.decode(stored, source)
    if manifest is not None and len(manifest.variables) != len(values):
        raise ValueError(
            f"Cannot restore {_describe(optimizer)} from {source}: its manifest lists "
            f"{len(manifest.variables)} optimizer variables, the file holds {len(values)}: "
            f"an entry is missing or extra, so the file is damaged. Nothing was loaded "
            f"into the optimizer. {FIX}"
        )
    if manifest is not None:
        _check_recorded(optimizer, manifest, values, source)
    return FileState(source, values, check_entries(group, source), manifest)


def _check_recorded(
    optimizer: Any, manifest: _manifest.Manifest, values: list[np.ndarray], source: str
) -> None:
    """Each value has the shape its manifest records (a changed entry is damage)."""
    for index, (slot, value) in enumerate(zip(manifest.variables, values, strict=True)):
        if tuple(value.shape) != slot.shape:
            raise ValueError(
                f"Cannot restore {_describe(optimizer)} from {source}: optimizer entry "
                f"{index} ('{slot.name}') holds shape {tuple(value.shape)}, its manifest "
                f"records {slot.shape}: the file is damaged. Nothing was loaded into the "
                f"optimizer. {FIX}"
            )


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


def prefix_count(optimizer: Any) -> int:
    """How many variables an optimizer has before it is built.

    Keras creates the step counter, then (for a float rate) the rate variable,
    in ``__init__``; ``build`` appends every slot after them.
    """
    return 1 + int(_keras_private.has_rate_variable(optimizer))


def _mismatch(
    optimizer: Any, variables: list[Any], values: list[np.ndarray], source: str, first: int = 0
) -> str:
    """Why ``values`` cannot be assigned to ``variables``; empty if they can.

    ``first``: the file entry number of ``values[0]`` (for the message).
    """
    if len(values) != len(variables):
        state = "built" if optimizer.built else "not built yet"
        return (
            f"Cannot restore {_describe(optimizer)} ({state}) from {source}: the "
            f"file holds {len(values)} optimizer variables, this optimizer has "
            f"{len(variables)}. Plain Keras would skip all optimizer state here "
            f"with only a warning; nothing was loaded into the optimizer."
        )
    for index, (variable, value) in enumerate(zip(variables, values, strict=True), first):
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


def host_values(variables: list[Any]) -> list[np.ndarray]:
    with _keras_private.eager_scope():  # build() may run while fit traces
        return [np.array(host_array(v)) for v in variables]


def _assign(variables: list[Any], values: list[np.ndarray]) -> None:
    with _keras_private.eager_scope():
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)


def _assign_releasing(variables: list[Any], values: list[Any]) -> None:
    """``_assign``, dropping each array once assigned: a load peaks at one copy of the state."""
    with _keras_private.eager_scope():
        for index, variable in enumerate(variables):
            variable.assign(values[index])
            values[index] = None


def check_identity(optimizer: Any, manifest: _manifest.Manifest, source: str) -> None:
    """Refuses a file another optimizer class or slot layout wrote, built or not."""
    own_class = _manifest.optimizer_class(optimizer)
    if manifest.optimizer_class != own_class:
        raise ValueError(
            f"Cannot restore {_describe(optimizer)} from {source}: the file was written "
            f"by a {manifest.optimizer_class} optimizer, this one is a {own_class} (its "
            f"slots would become this optimizer's slots). Nothing was loaded into the "
            f"optimizer. {FIX}"
        )
    own_layout = _manifest.layout(optimizer)
    if manifest.layout is not None and own_layout is not None and manifest.layout != own_layout:
        raise ValueError(
            f"Cannot restore {_describe(optimizer)} from {source}: the file was written "
            f"by a {own_class} with arguments that give another slot layout (per "
            f"variable it holds {_roles(manifest.layout)}, this optimizer "
            f"{_roles(own_layout)}). Nothing was loaded into the optimizer. {FIX}"
        )


def _roles(layout: tuple[tuple[Any, ...], ...]) -> str:
    per_variable = sorted({str(entry[0]) for entry in layout if entry[1] is not None})
    own = [str(entry[0]) for entry in layout if entry[1] is None]
    return f"slots {per_variable or 'none'} and own variables {own}"


def _suffixes(path: str) -> list[str]:
    """A path and every shorter tail of it that still names layer and variable."""
    parts = path.split("/")
    return ["/".join(parts[i:]) for i in range(max(len(parts) - 1, 1))]


def _owner_map(
    optimizer: Any, recorded: tuple[_manifest.ModelVariable, ...], built_for: list[Any], source: str
) -> dict[int, int]:
    """Which of ``built_for`` each recorded model variable is: by path, else by position.

    A model built in this process prefixes its variables' paths with its own
    name ("sequential/dense/kernel"); the same model from ``load_model`` does
    not ("dense/kernel"): a path that ends with the other (layer and name at
    least) names the same variable, where exactly one does.
    """
    described = [(str(v.path), tuple(int(d) for d in v.shape)) for v in built_for]
    exact: dict[str, list[int]] = {}
    tails: dict[str, list[int]] = {}
    for i, (path, _) in enumerate(described):
        exact.setdefault(path, []).append(i)
        for tail in _suffixes(path):
            tails.setdefault(tail, []).append(i)
    # Variables of the same path (two submodels with a layer "dense") match in
    # order, as Keras built their slots: the k-th recorded, the k-th here.
    seen: dict[str, int] = {}
    twins = collections.Counter(v.path for v in recorded)
    by_path: dict[int, int] = {}
    for index, variable in enumerate(recorded):
        found = exact.get(variable.path, [])
        if not found:  # it ends with one of ours, or one of ours ends with it
            found = sorted(
                {*tails.get(variable.path, ())}.union(
                    *(exact.get(t, ()) for t in _suffixes(variable.path))
                )
            )
        k = seen.get(variable.path, 0)
        seen[variable.path] = k + 1
        if len(found) == twins[variable.path] and described[found[k]][1] == variable.shape:
            by_path[index] = found[k]
    if len(by_path) == len(recorded) and len(set(by_path.values())) == len(recorded):
        return by_path
    if not by_path and [v.shape for v in recorded] == [shape for _, shape in described]:
        # No path matches at all: the same model rebuilt under other names.
        return {i: i for i in range(len(recorded))}
    missing = [v.path for i, v in enumerate(recorded) if i not in by_path]
    raise ValueError(
        f"Cannot restore {_describe(optimizer)} from {source}: the file holds optimizer "
        f"state for {len(recorded)} model variables, and {len(missing)} of them "
        f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}) are not among "
        f"the {len(built_for)} variables this optimizer was built for"
        f"{' (the rest match by path, so position cannot be trusted)' if by_path else ''}"
        f": their state would be lost (a layer frozen since the file was written, or "
        f"another model). Nothing was loaded into the optimizer. {FIX}"
    )


def _plan(
    optimizer: Any, manifest: _manifest.Manifest | None, values: list[np.ndarray], source: str
) -> Plan:
    """Where each of a file's values goes in a built optimizer; raises if anything does not fit.

    With a manifest, slots go to the variables they belong to (newly trained
    variables start fresh); without one, by position with every shape checked.
    """
    variables = optimizer._plain_variables()
    if manifest is None:
        _check(optimizer, values, source)
        return Plan(variables[: len(values)], values, [])
    check_identity(optimizer, manifest, source)
    built_for = list(optimizer._trainable_variables)
    own = _manifest.attribute(variables, built_for)
    if manifest.built_for is None:
        # Written before the writer was built: only its own variables.
        _check(optimizer, values, source)
        return Plan(variables[: len(values)], values, [])
    owners = _owner_map(optimizer, manifest.built_for, built_for, source)
    wanted: dict[tuple[Any, ...], int] = {}
    globals_seen: dict[str, int] = {}
    for index, slot in enumerate(own):
        if slot.owner is None:
            key: tuple[Any, ...] = (None, slot.role, globals_seen.get(slot.role, 0))
            globals_seen[slot.role] = key[2] + 1
        else:
            key = (slot.owner, slot.role)
        wanted[key] = index
    targets: list[Any] = []
    chosen: set[int] = set()
    globals_seen = {}
    for index, (slot, value) in enumerate(zip(manifest.variables, values, strict=True)):
        if slot.owner is None:
            key = (None, slot.role, globals_seen.get(slot.role, 0))
            globals_seen[slot.role] = key[2] + 1
        else:
            key = (owners[slot.owner], slot.role)
        target = wanted.get(key)
        if target is None:
            raise ValueError(
                f"Cannot restore {_describe(optimizer)} from {source}: this optimizer has "
                f"no variable for entry {index} ('{slot.name}', role '{slot.role}'). "
                f"Nothing was loaded into the optimizer. {FIX}"
            )
        problem = _mismatch(optimizer, [variables[target]], [value], source, index)
        if problem:
            raise ValueError(f"{problem} {FIX}")
        targets.append(variables[target])
        chosen.add(target)
    left = [i for i in range(len(variables)) if i not in chosen]
    unowned = [variables[i].path for i in left if own[i].owner is None]
    if unowned:
        raise ValueError(
            f"Cannot restore {_describe(optimizer)} from {source}: the file holds no value "
            f"for its variables {unowned}. Nothing was loaded into the optimizer. {FIX}"
        )
    left_owners = {own[i].owner for i in left} - {None}
    fresh = sorted(str(built_for[o].path) for o in left_owners if o is not None)
    return Plan(targets, values, fresh)


def _apply(optimizer: Any, plan: Plan, source: str) -> None:
    """Assigns a plan (and releases its arrays); one warning names what starts fresh."""
    _assign_releasing(plan.targets, plan.values)
    if plan.fresh:
        warnings.warn(
            f"{source} holds no optimizer state for {len(plan.fresh)} variables "
            f"{_describe(optimizer)} trains ({', '.join(plan.fresh)}): they were not "
            "trainable when it was written (unfrozen since). Their slots start fresh; "
            "everything else was restored.",
            stacklevel=4,
        )


def check_wrapper_load(optimizer: Any, state: AppliedRateState, wrapper: Any, store: Any) -> None:
    """Checks a file before the ``LossScaleOptimizer`` wrapping ``optimizer`` loads it.

    The wrapper assigns its own variables and ``optimizer``'s by position
    from its group, before Keras hands ``optimizer`` its own group (see
    ``_keras_private.CheckedWrapperLoad``). Everything either load would assign
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
        if file.values:
            check_file(optimizer, file)
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
        if len(values) - count - wrapped in trailing and _same_arrays(copy, file.values):
            return count
    # Written before the wrapper was built, while the wrapped optimizer held
    # queued slots: the group copies only the wrapped optimizer's variables
    # then (its step counter and rate); the queue is in the wrapped group.
    count = WRAPPER_VARIABLES_BEFORE_BUILD
    copy = values[count:]
    if count in counts and 0 < len(copy) < wrapped and _same_arrays(copy, file.values[: len(copy)]):
        return count
    raise ValueError(
        f"Cannot restore {_describe(wrapper)} from {source}: its group holds "
        f"{len(values)} entries, and they are not its own followed by a copy of the "
        f"{wrapped} entries of the optimizer it wraps (group "
        f"'{_keras_private.WRAPPED_CHILD}'): an entry is missing, extra, moved or "
        f"changed, so the file is damaged. Nothing was loaded into the optimizer. {FIX}"
    )


def _same_arrays(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Entry for entry the same dtype, shape and bytes."""
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(a, b, strict=True)
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


def check_file(optimizer: Any, file: FileState) -> Plan | None:
    """Checks a file in full against the optimizer; the plan if it is built.

    Unbuilt: the class and layout (manifest) and the variables it has now
    (step counter, rate); the slots are checked at ``build``.
    """
    if optimizer.built:
        return _plan(optimizer, file.manifest, file.values, file.source)
    if file.manifest is not None:
        check_identity(optimizer, file.manifest, file.source)
    _check_prefix(optimizer, file)
    return None


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
    try:
        plan = check_file(optimizer, file)
    except ValueError as error:
        raise ValueError(f"{error}{_loss_scaling_hint(store)}") from None
    if plan is not None:
        _apply(optimizer, plan, file.source)
        state.assign_entries(optimizer, file.entries)
        return
    # Not built: nothing says which variables it will train. Restore the step
    # counter (and rate) now; the slots wait for build(), which matches them.
    enqueue(optimizer, state, file.source, file.values, file.entries, file.manifest)


# Orders queued loads and checkpoint restores (a newer one wins at build).
_EVENTS = itertools.count()


def restore_started(state: AppliedRateState) -> None:
    """A tf.train.Checkpoint restore into the optimizer begins (newer than queued loads).

    A plain checkpoint's slots stay with TensorFlow until ``build``: queued
    loads older than it do not apply then. (A checkpoint of ours with a
    manifest joins the queue instead, see ``restore_handled``.)
    """
    state.__dict__["_checkpoint_restored_before"] = state.__dict__.get("_checkpoint_restored", -1)
    state.__dict__["_checkpoint_restored"] = next(_EVENTS)


def restore_handled(state: AppliedRateState) -> None:
    """The checkpoint being restored was refused, or its state joined the queue."""
    state.__dict__["_checkpoint_restored"] = state.__dict__.get("_checkpoint_restored_before", -1)


def enqueue(
    optimizer: Any,
    state: AppliedRateState,
    source: str,
    values: list[np.ndarray],
    entries: Entries | None,
    manifest: _manifest.Manifest | None,
) -> None:
    """Queues a checked file's slots for ``build``; assigns the step counter and rate now."""
    count = prefix_count(optimizer)
    prefix = optimizer._plain_variables()[:count]
    state.pending = Pending(
        source=source,
        slots=values[count:],
        entries=entries,
        manifest=manifest,
        previous=host_values(prefix),
        sequence=next(_EVENTS),
        earlier=state.pending,
    )
    _assign(prefix, values[:count])
    state.preview_entries(optimizer, entries)


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
    count = prefix_count(optimizer)
    prefix = optimizer._plain_variables()[:count]
    problem = _mismatch(optimizer, prefix, file.values[:count], file.source)
    if problem or len(file.values) < count:
        problem = problem or _mismatch(optimizer, prefix, file.values, file.source)
        raise ValueError(f"{problem} {FIX}")
    return count


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
    if len(values) != prefix_count(optimizer) or values[0].shape != ():
        return False
    steps = host_values([_keras_private.raw_step_counter(optimizer)])[0]
    return int(values[0]) == 0 and int(steps) == 0


def apply_pending(optimizer: Any, state: AppliedRateState) -> tuple[Pending, Plan] | None:
    """Applies a queued file's state once the optimizer is built (from build()).

    A queued load that does not fit the variables the optimizer was built for
    never happened: the step counter goes back to what it was before it, the
    load it superseded, if any, applies, and the error is raised (``build``
    cannot know whether the load asked for ``skip_mismatch``).
    """
    pending, state.pending = state.pending, None
    if pending is None:
        return None
    if state.__dict__.get("_checkpoint_restored", -1) > pending.sequence:
        return None  # a tf.train.Checkpoint restored since is newer: TensorFlow restores its slots
    prefix = optimizer._plain_variables()[: prefix_count(optimizer)]
    values = host_values(prefix) + pending.slots
    try:
        plan = _plan(optimizer, pending.manifest, values, pending.source)
    except ValueError as error:
        _assign(prefix, pending.previous)
        state.pending = pending.earlier
        apply_pending(optimizer, state)
        raise ValueError(
            f"{error} (The state was loaded before the optimizer was built, so it could "
            "only be matched to the variables it trains now; the optimizer is back to the "
            "state it had before that load.)"
        ) from None
    _apply(optimizer, plan, pending.source)
    state.assign_entries(optimizer, pending.entries)
    return pending, plan


def values_to_save(optimizer: Any, state: AppliedRateState) -> list[Any]:
    """What a save writes for the optimizer: its variables, then any queued slots."""
    variables: list[Any] = optimizer._plain_variables()
    pending = state.pending
    return variables if pending is None else [*variables, *pending.slots]


def manifest_to_save(optimizer: Any, state: AppliedRateState) -> _manifest.Manifest | None:
    """The manifest a save writes next to ``values_to_save``.

    Queued slots carry the manifest of the file they came from (their owners
    are recorded there); queued slots from a file without one are written
    without one (the reader matches them by position, as Keras does).
    """
    variables = optimizer._plain_variables()
    built_for = list(optimizer._trainable_variables) if optimizer.built else None
    manifest = _manifest.describe(optimizer, variables, built_for)
    pending: Pending | None = state.pending
    if pending is None:
        return manifest
    if pending.manifest is None:
        return None
    return pending.manifest.with_prefix(list(manifest.variables))


def save(optimizer: Any, state: AppliedRateState, store: Any) -> None:
    """Replaces ``Optimizer.save_own_variables``, with nothing left behind.

    Each value is written as it is read: a save holds one variable's copy at a time.
    """
    with _keras_private.eager_scope():
        for index, value in enumerate(values_to_save(optimizer, state)):
            store[str(index)] = value if isinstance(value, np.ndarray) else host_array(value)


def pending_rate(state: AppliedRateState, update_count: Any) -> np.ndarray | None:
    """The rate a queued file recorded, if it belongs to ``update_count``."""
    entries = None if state.pending is None else state.pending.entries
    if not entries or int(entries["update_count"]) != int(host_array(update_count)):
        return None
    rate: np.ndarray = entries["applied_learning_rate"]
    return rate
