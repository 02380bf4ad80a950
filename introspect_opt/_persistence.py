"""Strict loading of optimizer state from ``.keras`` / ``.weights.h5`` files.

Keras skips *all* optimizer state, with only a warning, when the number of
saved variables differs from the optimizer's. Introspectable optimizers load
everything or raise an error that names the file, the optimizer and the fix,
and never leave anything half-loaded.

Two cases need care because the optimizer and the file legitimately differ:

* The file was written after ``compile`` but before any training: it holds only
  the variables an optimizer has before it is built (its step counter and, for
  a float rate, the rate). Loaded into an optimizer that has not trained either,
  those are restored and the slots keep their initial values.
* The optimizer is not built yet (``compile``, ``load_weights``, then ``fit``;
  ``load_model`` of a model that is not built; unpickling): its slots do not
  exist. The step counter and rate are restored at once, the slots are kept and
  applied when the optimizer is built. If they do not fit then, the early part
  is rolled back and the error is raised, or, under
  ``load_weights(..., skip_mismatch=True)``, a warning says that the
  optimizer's saved state was skipped, as Keras would have done.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from . import _keras_private
from ._state import AppliedRateState, PendingRestore

_FIX = (
    "Create the optimizer with the same class and arguments as the one that "
    "wrote the file (for example the same `momentum`, `use_ema` and "
    "`gradient_accumulation_steps`) for the same model, or pass "
    "`skip_mismatch=True` to `load_weights` to load the model weights and "
    "keep this optimizer's current state."
)


def _describe(optimizer: Any) -> str:
    return f"{type(optimizer).__name__} '{optimizer.name}'"


def _read_values(optimizer: Any, store: Any, source: str) -> list[np.ndarray]:
    keys = set(store.keys())
    expected = {str(i) for i in range(len(keys))}
    if keys != expected:
        raise ValueError(
            f"Cannot restore {_describe(optimizer)} from {source}: its optimizer "
            f"entries are {sorted(keys)}, not the numbered entries Keras writes. "
            f"The file was not written by a Keras optimizer. {_FIX}"
        )
    return [np.asarray(store[str(i)]) for i in range(len(keys))]


def _mismatch(optimizer: Any, values: list[np.ndarray], source: str) -> str | None:
    """Why ``values`` cannot be assigned to the optimizer's variables, or None."""
    variables = optimizer._plain_variables()
    if len(values) != len(variables):
        state = "built" if optimizer.built else "not built yet"
        return (
            f"Cannot restore {_describe(optimizer)} ({state}) from {source}: the "
            f"file holds {len(values)} optimizer variables, this optimizer has "
            f"{len(variables)}. Plain Keras would skip all optimizer state here "
            f"with only a warning; nothing was loaded into the optimizer."
        )
    index = _first_shape_mismatch(variables, values)
    if index is not None:
        variable, value = variables[index], values[index]
        return (
            f"Cannot restore {_describe(optimizer)} from {source}: optimizer "
            f"variable {index} ('{variable.path}') has shape "
            f"{tuple(variable.shape)}, the file holds shape "
            f"{tuple(value.shape)}. Nothing was loaded into the optimizer."
        )
    return None


def _first_shape_mismatch(variables: list[Any], values: list[np.ndarray]) -> int | None:
    """Index of the first variable whose shape differs from its value's, if any."""
    for index, (variable, value) in enumerate(zip(variables, values, strict=False)):
        if tuple(variable.shape) != tuple(value.shape):
            return index
    return None


def _numpy(variables: list[Any]) -> list[np.ndarray]:
    with _keras_private.eager_scope():  # build() may run while fit traces
        return [np.asarray(v.numpy()) for v in variables]


def _assign(variables: list[Any], values: list[np.ndarray]) -> None:
    with _keras_private.eager_scope():
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)


def _is_zero(raw_steps: Any) -> bool:
    return int(np.asarray(raw_steps)) == 0


def load_optimizer_variables(optimizer: Any, state: AppliedRateState, store: Any) -> None:
    """Replaces ``Optimizer.load_own_variables``: everything, or a clear error."""
    source = _keras_private.describe_store(store)
    state.owner_load = None
    if state.pending is not None:  # a newer load supersedes an earlier, unapplied one
        if state.pending.previous_prefix is not None:
            _assign(_prefix(optimizer), state.pending.previous_prefix)
        state.pending = None
    if not list(store.keys()):
        warnings.warn(
            f"{source} holds no state for {_describe(optimizer)} (the model was "
            "saved before it was compiled). The optimizer keeps its current "
            "state.",
            stacklevel=3,
        )
        return
    values = _read_values(optimizer, store, source)
    variables = optimizer._plain_variables()
    prefix = _prefix(optimizer)
    fits_prefix = len(values) >= len(prefix) and _first_shape_mismatch(prefix, values) is None
    if len(values) == len(variables):
        problem = _mismatch(optimizer, values, source)
        if problem:
            raise ValueError(f"{problem} {_FIX}")
        _assign(variables, values)
        state.owner_load = "loaded"
    elif not optimizer.built and len(values) > len(variables) and fits_prefix:
        # Its slots do not exist yet: restore the counter and rate now, keep
        # the slots for build().
        state.pending = PendingRestore(
            source=source,
            slot_values=values[len(prefix) :],
            previous_prefix=_numpy(prefix),
            lenient=_keras_private.keras_load_skips_mismatches(),
        )
        _assign(prefix, values[: len(prefix)])
        state.owner_load = "deferred"
    elif (
        len(values) == len(prefix)
        and fits_prefix
        and _is_zero(values[0])
        and _is_zero(_numpy([_keras_private.raw_step_counter(optimizer)])[0])
    ):
        # Written after compile, before any training, and loaded into an
        # optimizer that has not trained either: the slots are at their
        # initial values on both sides.
        _assign(prefix, values)
        state.owner_load = "loaded"
    else:
        problem = _mismatch(optimizer, values, source)
        raise ValueError(f"{problem} {_FIX}")


def _prefix(optimizer: Any) -> list[Any]:
    """The variables an optimizer has before it is built.

    Keras creates the step counter, then (for a float rate) the rate variable,
    in ``__init__``; ``build`` appends every slot after them.
    """
    count = 1 + int(_keras_private.has_rate_variable(optimizer))
    return list(optimizer._plain_variables()[:count])


def save_optimizer_variables(optimizer: Any, state: AppliedRateState, store: Any) -> None:
    """Like ``Optimizer.save_own_variables``, keeping state not applied yet."""
    values = _numpy(optimizer._plain_variables())
    if state.pending is not None and state.pending.slot_values is not None:
        values += state.pending.slot_values
    for index, value in enumerate(values):
        store[str(index)] = value


def apply_pending(optimizer: Any, state: AppliedRateState) -> None:
    """Applies state loaded before the optimizer was built; called from build()."""
    pending, state.pending = state.pending, None
    if pending is None:
        return
    if pending.slot_values is None:  # only the cached rate was waiting
        state.assign_from_file(pending.cached)
        return
    prefix = _prefix(optimizer)
    values = _numpy(prefix) + pending.slot_values
    problem = _mismatch(optimizer, values, pending.source)
    if problem:
        if pending.previous_prefix is not None:
            _assign(prefix, pending.previous_prefix)  # nothing half-loaded
        if pending.lenient:
            warnings.warn(
                f"{problem} The optimizer state was loaded with "
                "`skip_mismatch=True` before the optimizer was built; it is "
                "skipped and the optimizer starts fresh.",
                stacklevel=3,
            )
            return
        raise ValueError(
            f"{problem} (The state was loaded before the optimizer was built, so "
            f"it could only be checked now.) {_FIX}"
        )
    _assign(optimizer._plain_variables()[len(prefix) :], pending.slot_values)
    state.assign_from_file(pending.cached)
