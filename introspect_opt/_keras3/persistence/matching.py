"""Which of a file's values goes into which optimizer variable, or why none may.

A file with a manifest (see ``_common.manifest``) assigns each slot to the
variable it belongs to: the model variables recorded are found among those
the optimizer was built for by path, else by position; newly trained
variables start fresh. A file without one is matched by position, as Keras
does, with every shape checked. Anything that does not fit refuses the
whole load (:class:`RefusedLoad`) before a value is assigned.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from typing import Any

import keras
import numpy as np

from introspect_opt._common import manifest as _common_manifest
from introspect_opt._common.errors import KeepState, RefusedLoad, refused_load
from introspect_opt._common.manifest import Manifest, ModelVariable
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.host import host_array
from introspect_opt._keras3.persistence import manifest as _manifest

# What makes a refused load fit (refused_load adds how to keep the current state).
_SAME_OPTIMIZER = (
    "Create the optimizer with the same class and arguments as the one that "
    "wrote the file (for example the same `momentum`, `use_ema` and "
    "`gradient_accumulation_steps`) for the same model."
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which value goes into which optimizer variable; what starts fresh."""

    targets: list[Any]
    values: list[np.ndarray]
    fresh: list[str]  # model variables whose slots are not in the file
    # The file's recorded model variables -> those the optimizer was built
    # for (indices); None: the file records none (no manifest, or unbuilt).
    owners: dict[int, int] | None = None


def describe(optimizer: Any) -> str:
    """An optimizer as refusals name it: ``IntrospectableSGD 'sgd'``."""
    return f"{type(optimizer).__name__} '{optimizer.name}'"


def prefix_count(optimizer: Any) -> int:
    """How many variables an optimizer has before it is built.

    Keras creates the step counter, then (for a float rate) the rate variable,
    in ``__init__``; ``build`` appends every slot after them.
    """
    return 1 + int(_keras_private.has_rate_variable(optimizer))


def host_values(variables: list[Any]) -> list[np.ndarray]:
    with _keras_private.eager_scope():  # build() may run while fit traces
        return [np.array(host_array(v)) for v in variables]


def assign(variables: list[Any], values: list[np.ndarray]) -> None:
    with _keras_private.eager_scope():
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)


def _assign_releasing(variables: list[Any], values: list[Any]) -> None:
    """``assign``, dropping each array once assigned: a load peaks at one copy of the state."""
    with _keras_private.eager_scope():
        for index, variable in enumerate(variables):
            variable.assign(values[index])
            values[index] = None


def mismatch(
    optimizer: Any, variables: list[Any], values: list[np.ndarray], source: str, first: int = 0
) -> RefusedLoad | None:
    """Why ``values`` cannot be assigned to ``variables``; None if they can.

    ``first``: the file entry number of ``values[0]`` (for the message).
    """
    if len(values) != len(variables):
        state = "built" if optimizer.built else "not built yet"
        return refused_load(
            f"{describe(optimizer)} ({state})",
            source,
            f"the file holds {len(values)} optimizer variables, this optimizer has "
            f"{len(variables)}. Plain Keras would skip all optimizer state here "
            f"with only a warning; nothing was loaded into the optimizer.",
            _SAME_OPTIMIZER,
            keep_state=KeepState.KERAS3,
        )
    for index, (variable, value) in enumerate(zip(variables, values, strict=True), first):
        if tuple(variable.shape) != tuple(value.shape):
            return refused_load(
                describe(optimizer),
                source,
                f"optimizer variable {index} ('{variable.path}') has shape "
                f"{tuple(variable.shape)}, the file holds shape "
                f"{tuple(value.shape)}. Nothing was loaded into the optimizer.",
                _SAME_OPTIMIZER,
                keep_state=KeepState.KERAS3,
            )
        wants_int = keras.backend.standardize_dtype(variable.dtype).startswith(("int", "uint"))
        if wants_int != (value.dtype.kind in "iu"):
            return refused_load(
                describe(optimizer),
                source,
                f"optimizer variable {index} ('{variable.path}') holds "
                f"{'integers' if wants_int else 'floats'}, the file holds "
                f"{value.dtype}. Nothing was loaded into the optimizer.",
                _SAME_OPTIMIZER,
                keep_state=KeepState.KERAS3,
            )
    return None


def check_identity(optimizer: Any, manifest: Manifest, source: str) -> None:
    """Refuses a file another optimizer class or slot layout wrote, built or not."""
    _common_manifest.check_identity(
        manifest,
        _manifest.optimizer_class(optimizer),
        lambda: _manifest.layout(optimizer),
        describe(optimizer),
        source,
        _SAME_OPTIMIZER,
        KeepState.KERAS3,
    )


def _suffixes(path: str) -> list[str]:
    """A path and every shorter tail of it that still names layer and variable."""
    parts = path.split("/")
    return ["/".join(parts[i:]) for i in range(max(len(parts) - 1, 1))]


def _owner_map(
    optimizer: Any, recorded: tuple[ModelVariable, ...], built_for: list[Any], source: str
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
    raise refused_load(
        describe(optimizer),
        source,
        f"the file holds optimizer state for {len(recorded)} model variables, and "
        f"{len(missing)} of them ({', '.join(missing[:4])}"
        f"{', ...' if len(missing) > 4 else ''}) are not among the {len(built_for)} "
        "variables this optimizer was built for"
        f"{' (the rest match by path, so position cannot be trusted)' if by_path else ''}"
        ": their state would be lost (a layer frozen since the file was written, or "
        "another model). Nothing was loaded into the optimizer.",
        _SAME_OPTIMIZER,
        keep_state=KeepState.KERAS3,
    )


def make_plan(
    optimizer: Any, manifest: Manifest | None, values: list[np.ndarray], source: str
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
    built_for = _keras_private.variables_built_for(optimizer)
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
            raise refused_load(
                describe(optimizer),
                source,
                f"this optimizer has no variable for entry {index} ('{slot.name}', role "
                f"'{slot.role}'). Nothing was loaded into the optimizer.",
                _SAME_OPTIMIZER,
                keep_state=KeepState.KERAS3,
            )
        refusal = mismatch(optimizer, [variables[target]], [value], source, index)
        if refusal is not None:
            raise refusal
        targets.append(variables[target])
        chosen.add(target)
    left = [i for i in range(len(variables)) if i not in chosen]
    unowned = [variables[i].path for i in left if own[i].owner is None]
    if unowned:
        raise refused_load(
            describe(optimizer),
            source,
            f"the file holds no value for its variables {unowned}. Nothing was loaded "
            "into the optimizer.",
            _SAME_OPTIMIZER,
            keep_state=KeepState.KERAS3,
        )
    left_owners = {own[i].owner for i in left} - {None}
    fresh = sorted(str(built_for[o].path) for o in left_owners if o is not None)
    return Plan(targets, values, fresh, owners)


def apply(optimizer: Any, plan: Plan, source: str) -> None:
    """Assigns a plan (and releases its arrays); one warning names what starts fresh."""
    _assign_releasing(plan.targets, plan.values)
    if plan.fresh:
        warnings.warn(
            f"{source} holds no optimizer state for {len(plan.fresh)} variables "
            f"{describe(optimizer)} trains ({', '.join(plan.fresh)}): they were not "
            "trainable when it was written (unfrozen since). Their slots start fresh; "
            "everything else was restored.",
            stacklevel=4,
        )


def _check(optimizer: Any, values: list[np.ndarray], source: str) -> None:
    """Raises unless ``values`` fit the built optimizer's variables, in full.

    One exception: a file written after ``compile`` and before any training
    holds only the variables that exist before ``build`` (the step counter,
    the rate); into an optimizer that has not trained either it fits, since
    the slots are at their initial values on both sides.
    """
    variables = optimizer._plain_variables()
    refusal = mismatch(optimizer, variables, values, source)
    if refusal is not None and _was_saved_before_build(optimizer, values):
        refusal = mismatch(optimizer, variables[: len(values)], values, source)
    if refusal is not None:
        raise refusal


def check_prefix(optimizer: Any, values: list[np.ndarray], source: str) -> None:
    """Raises unless a file's values fit the variables an unbuilt optimizer has."""
    count = prefix_count(optimizer)
    prefix = optimizer._plain_variables()[:count]
    refusal = mismatch(optimizer, prefix, values[:count], source)  # fewer values: refused too
    if refusal is not None:
        raise refusal


def _was_saved_before_build(optimizer: Any, values: list[np.ndarray]) -> bool:
    if len(values) != prefix_count(optimizer) or values[0].shape != ():
        return False
    steps = host_values([_keras_private.raw_step_counter(optimizer)])[0]
    return int(values[0]) == 0 and int(steps) == 0
