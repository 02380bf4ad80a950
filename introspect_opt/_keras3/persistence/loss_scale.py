"""A ``LossScaleOptimizer`` loading a file: everything it and its optimizer assign, checked first.

Under ``mixed_float16``, ``compile`` wraps the optimizer; the wrapper loads
its own group (its variables, then a copy of the wrapped optimizer's) before
Keras hands the wrapped optimizer its own group. :func:`check_wrapper_load`
runs before the wrapper assigns anything (``compat.CheckedWrapperLoad``).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from introspect_opt._common.errors import KeepState, refused_load
from introspect_opt._common.protocols import WeightsStore
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.compat import WRAPPER_VARIABLES_BEFORE_BUILD
from introspect_opt._keras3.persistence.files import (
    FileState,
    check_file,
    read_file,
    read_numbered,
    unreadable,
)
from introspect_opt._keras3.persistence.matching import assign, describe, mismatch
from introspect_opt._keras3.state import AppliedRateState


def check_wrapper_load(
    optimizer: Any, state: AppliedRateState, wrapper: Any, store: WeightsStore
) -> None:
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
    path = _keras_private.store_entry_path(store)
    child = _keras_private.WRAPPED_CHILD
    state.wrapper_check = (weakref.ref(store), None)
    source = _keras_private.describe_store(store)
    own = _keras_private.wrapper_own_variables(wrapper)
    own_values: list[np.ndarray] = []
    try:
        values = read_numbered(wrapper, store, source)
        variables = _keras_private.wrapper_variables(wrapper)
        _keras_private.point_store(store, path, child)
        file = read_file(optimizer, store)
        if values and not file.values:
            raise refused_load(
                describe(wrapper),
                source,
                "the file holds state for an optimizer but none for the one it wraps "
                f"(group '{child}'): it was written without loss scaling (under another "
                "dtype policy than mixed_float16), or that group is missing. Nothing "
                "was loaded into the optimizer.",
                "Load it under the dtype policy that wrote it.",
                keep_state=KeepState.KERAS3,
            )
        if len(values) == len(variables):
            refusal = mismatch(wrapper, variables, values, source)
            if refusal is None and file.values:
                _writer_own_count(wrapper, values, file, source, [len(own)])
            own_assigned = values[: len(own)]
        elif file.values and wrapper.built:
            # Keras skips a group of another length (a warning); its own state from here.
            count = _writer_own_count(
                wrapper, values, file, source, [len(own), WRAPPER_VARIABLES_BEFORE_BUILD]
            )
            own_values = values[:count] if count == len(own) else []
            refusal = mismatch(wrapper, own, own_values, source) if own_values else None
            own_assigned = own_values
        else:
            refusal = None  # Keras skips the group of a wrapper not built yet (a warning)
            own_assigned = []
        if refusal is not None:
            raise refusal
        _check_loss_scale(wrapper, own, own_assigned, source)
        if file.values:
            check_file(optimizer, file)
    except ValueError as error:
        state.wrapper_check = (weakref.ref(store), str(error))
        raise
    except Exception as error:  # h5py's own, for an entry it cannot read
        named = unreadable(wrapper, source, error)
        state.wrapper_check = (weakref.ref(store), str(named))
        raise named from error
    finally:
        _keras_private.point_store(store, path)
    if own_values:  # Keras skips the group of this length: its own state from here
        assign(own, own_values)


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
    raise refused_load(
        describe(wrapper),
        source,
        f"its group holds {len(values)} entries, and they are not its own followed by a "
        f"copy of the {wrapped} entries of the optimizer it wraps (group "
        f"'{_keras_private.WRAPPED_CHILD}'): an entry is missing, extra, moved or "
        "changed, so the file is damaged. Nothing was loaded into the optimizer.",
        keep_state=KeepState.KERAS3,
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
            raise refused_load(
                describe(wrapper),
                source,
                f"its loss scale ('{variable.path}') would be {value}; a loss scale is "
                "finite and above 0, so the file is damaged. Nothing was loaded into the "
                "optimizer.",
                keep_state=KeepState.KERAS3,
            )
