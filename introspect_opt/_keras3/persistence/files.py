"""Loading optimizer state all or nothing, and saving all of it: Keras files.

Keras skips *all* optimizer state, with only a warning, when the number of
saved variables differs from the optimizer's. An introspectable optimizer
reads everything a file holds for it (its own numbered entries, the state's
group and the manifest there, see ``_common.manifest``) and checks it before
it assigns anything: a load either restores everything or raises an error
(:class:`RefusedLoad`) that names the file, the optimizer and the fix, and
changes nothing.

Identity is recorded, never inferred: a file with a manifest is refused at
the load when another class or slot layout wrote it, built or not, and its
slots go to the model variables they belong to (``matching``). An optimizer
that is not built has no slots yet: the file's slots wait in a queue
(``queue``) until ``build``, which matches them to the variables it is given.
Every save path writes the queue: Keras files and pickle through ``save``,
and ``tf.train.Checkpoint`` through ``checkpoint``. The optimizer never looks
for the model it belongs to. A ``LossScaleOptimizer`` around it checks the
file first (``loss_scale``).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from introspect_opt._common.errors import KeepState, RefusedLoad, refused_load
from introspect_opt._common.manifest import Manifest, decode
from introspect_opt._common.names import MANIFEST_KEY, STATE_ATTRIBUTE
from introspect_opt._common.protocols import WeightsStore
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.features import Entries, features
from introspect_opt._keras3.host import host_array, is_number_array
from introspect_opt._keras3.persistence import manifest as _manifest
from introspect_opt._keras3.persistence.entries import check_entries
from introspect_opt._keras3.persistence.matching import (
    Plan,
    apply,
    check_identity,
    check_prefix,
    describe,
    make_plan,
)
from introspect_opt._keras3.persistence.queue import Pending, enqueue
from introspect_opt._keras3.state import AppliedRateState

# What h5py raises for an entry it cannot read (a bad chunk, an empty dataset).
READ_ERRORS = (OSError, TypeError, KeyError, RuntimeError)


@dataclasses.dataclass(frozen=True)
class FileState:
    """Everything a Keras file holds for one optimizer, checked."""

    source: str
    values: list[np.ndarray]  # the optimizer's own numbered entries, in order
    entries: Entries | None  # the state's group; None: a plain optimizer's file
    manifest: Manifest | None  # None: plain Keras, or introspect-opt 0.2


def read_file(optimizer: Any, store: WeightsStore) -> FileState:
    """Reads and checks the optimizer's entries, the state's group and the manifest of a file."""
    source = _keras_private.describe_store(store)
    values = read_numbered(optimizer, store, source)
    try:
        group = dict(_keras_private.read_child_group(store, STATE_ATTRIBUTE))
        stored = group.pop(MANIFEST_KEY, None)
        stored = None if stored is None else np.asarray(stored)
    except READ_ERRORS as error:
        raise unreadable(optimizer, source, error) from error
    manifest = None if stored is None else decode(stored, source, keep_state=KeepState.KERAS3)
    if manifest is not None and len(manifest.variables) != len(values):
        raise refused_load(
            describe(optimizer),
            source,
            f"its manifest lists {len(manifest.variables)} optimizer variables, the file "
            f"holds {len(values)}: an entry is missing or extra, so the file is damaged. "
            "Nothing was loaded into the optimizer.",
            keep_state=KeepState.KERAS3,
        )
    if manifest is not None:
        _check_recorded(optimizer, manifest, values, source)
    entries = check_entries(group, source)
    _check_rows(optimizer, manifest, entries, source)
    return FileState(source, values, entries, manifest)


def _check_rows(
    optimizer: Any, manifest: Manifest | None, entries: Entries | None, source: str
) -> None:
    """Entries kept per model variable have one row per variable the manifest records."""
    recorded = None if manifest is None or manifest.built_for is None else manifest.built_for
    for feature in features():
        for key in feature.rows_per_model_variable:
            if entries is None or key not in entries:
                continue
            rows = entries[key].shape[0]
            if recorded is None or rows != len(recorded):
                what = (
                    "no model variables (no manifest says whose they are)"
                    if recorded is None
                    else f"{len(recorded)} model variables"
                )
                raise refused_load(
                    describe(optimizer),
                    source,
                    f"its entry {key!r} has {rows} rows, one per model variable, and the "
                    f"file records {what}: the file is damaged. Nothing was loaded into "
                    "the optimizer.",
                    keep_state=KeepState.KERAS3,
                )


def _check_recorded(
    optimizer: Any, manifest: Manifest, values: list[np.ndarray], source: str
) -> None:
    """Each value has the shape its manifest records (a changed entry is damage)."""
    for index, (slot, value) in enumerate(zip(manifest.variables, values, strict=True)):
        if tuple(value.shape) != slot.shape:
            raise refused_load(
                describe(optimizer),
                source,
                f"optimizer entry {index} ('{slot.name}') holds shape {tuple(value.shape)}, "
                f"its manifest records {slot.shape}: the file is damaged. Nothing was "
                "loaded into the optimizer.",
                keep_state=KeepState.KERAS3,
            )


def unreadable(optimizer: Any, source: str, error: BaseException) -> RefusedLoad:
    """h5py's own error for an entry it cannot read (a bad chunk, an empty dataset), named."""
    return refused_load(
        describe(optimizer),
        source,
        f"an entry could not be read ({type(error).__name__}: {error}). The file is "
        "damaged; nothing was loaded into the optimizer.",
        keep_state=KeepState.KERAS3,
    )


def read_numbered(optimizer: Any, store: WeightsStore, source: str) -> list[np.ndarray]:
    """The numbered entries Keras writes for an optimizer, checked to be numbers."""
    keys = set(store.keys())
    if keys != {str(i) for i in range(len(keys))}:
        raise refused_load(
            describe(optimizer),
            source,
            f"its optimizer entries are {sorted(keys)}, not the numbered entries 0..N-1 "
            "Keras writes: an entry is missing or renamed, so the file is damaged (or not "
            "written by a Keras optimizer); nothing was loaded into the optimizer.",
            keep_state=KeepState.KERAS3,
        )
    try:
        values = [np.asarray(store[str(i)]) for i in range(len(keys))]
    except READ_ERRORS as error:
        raise unreadable(optimizer, source, error) from error
    for index, value in enumerate(values):
        if not is_number_array(value):
            raise refused_load(
                describe(optimizer),
                source,
                f"optimizer entry {index} holds {value.dtype} data, not numbers. The file "
                "is damaged; nothing was loaded into the optimizer.",
                keep_state=KeepState.KERAS3,
            )
    return values


def check_file(optimizer: Any, file: FileState) -> Plan | None:
    """Checks a file in full against the optimizer; the plan if it is built.

    Unbuilt: the class and layout (manifest) and the variables it has now
    (step counter, rate); the slots are checked at ``build``.
    """
    if optimizer.built:
        return make_plan(optimizer, file.manifest, file.values, file.source)
    if file.manifest is not None:
        check_identity(optimizer, file.manifest, file.source)
    check_prefix(optimizer, file.values, file.source)
    return None


def load(optimizer: Any, state: AppliedRateState, store: WeightsStore) -> None:
    """Replaces ``Optimizer.load_own_variables``: everything, or an error and no change."""
    refused, state.wrapper_check = state.wrapper_check, None
    if refused is not None and refused[0]() is store and refused[1] is not None:
        raise refused_load(
            describe(optimizer),
            _keras_private.describe_store(store),
            "the LossScaleOptimizer that wraps it refused the same file, so nothing was "
            f"loaded into the optimizer. Its reason: {refused[1]}",
            keep_state=None,  # the reason quoted ends with it
        )
    file = read_file(optimizer, store)
    if not file.values:
        warnings.warn(
            f"{file.source} holds no state for {describe(optimizer)} (the model "
            "was saved before it was compiled). The optimizer keeps its current "
            "state.",
            stacklevel=3,
        )
        return
    try:
        plan = check_file(optimizer, file)
    except ValueError as error:
        raise RefusedLoad(f"{error}{_loss_scaling_hint(store)}") from None
    if plan is not None:
        apply(optimizer, plan, file.source)
        state.assign_entries(optimizer, file.entries, plan.owners)
        return
    # Not built: nothing says which variables it will train. Restore the step
    # counter (and rate) now; the slots wait for build(), which matches them.
    enqueue(optimizer, state, file.source, file.values, file.entries, file.manifest)


def _loss_scaling_hint(store: WeightsStore) -> str:
    """A hint when the file's optimizer was wrapped in a LossScaleOptimizer and this one is not."""
    try:
        wrapped = _keras_private.read_child_group(store, _keras_private.WRAPPED_CHILD)
    except READ_ERRORS:
        return ""
    if not wrapped:
        return ""
    return (
        " The file was written under mixed precision (a LossScaleOptimizer wrapped "
        'the optimizer): call `keras.config.set_dtype_policy("mixed_float16")` '
        "before building and loading the model."
    )


def values_to_save(optimizer: Any, state: AppliedRateState) -> list[Any]:
    """What a save writes for the optimizer: its variables, then any queued slots."""
    variables: list[Any] = optimizer._plain_variables()
    pending = state.pending
    return variables if pending is None else [*variables, *pending.slots]


def manifest_to_save(optimizer: Any, state: AppliedRateState) -> Manifest | None:
    """The manifest a save writes next to ``values_to_save``.

    Queued slots carry the manifest of the file they came from (their owners
    are recorded there); queued slots from a file without one are written
    without one (the reader matches them by position, as Keras does).
    """
    variables = optimizer._plain_variables()
    built_for = _keras_private.variables_built_for(optimizer) if optimizer.built else None
    manifest = _manifest.describe(optimizer, variables, built_for)
    pending: Pending | None = state.pending
    if pending is None:
        return manifest
    if pending.manifest is None:
        return None
    return pending.manifest.with_prefix(list(manifest.variables))


def save(optimizer: Any, state: AppliedRateState, store: WeightsStore) -> None:
    """Replaces ``Optimizer.save_own_variables``, with nothing left behind.

    Each value is written as it is read: a save holds one variable's copy at a time.
    """
    with _keras_private.eager_scope():
        for index, value in enumerate(values_to_save(optimizer, state)):
            store[str(index)] = value if isinstance(value, np.ndarray) else host_array(value)
