"""Strict loading of optimizer state from ``.keras`` / ``.weights.h5`` files.

Keras skips *all* optimizer state, with only a warning, when the number of
saved variables differs from the optimizer's. Introspectable optimizers load
everything or raise an error that names the file, the optimizer and the fix,
and never assign anything before every value has been checked. State loaded
into an optimizer that is not built yet (``compile``, ``load_weights``,
``fit``; or unpickling) is kept and applied when the optimizer is built,
instead of being dropped.
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


def _check_fit(optimizer: Any, values: list[np.ndarray], source: str) -> None:
    variables = optimizer.variables
    if len(values) != len(variables):
        state = "built" if optimizer.built else "not built yet"
        raise ValueError(
            f"Cannot restore {_describe(optimizer)} ({state}) from {source}: the "
            f"file holds {len(values)} optimizer variables, this optimizer has "
            f"{len(variables)}. Plain Keras would skip all optimizer state here "
            f"with only a warning; nothing was loaded. {_FIX}"
        )
    for index, (variable, value) in enumerate(zip(variables, values, strict=True)):
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(
                f"Cannot restore {_describe(optimizer)} from {source}: optimizer "
                f"variable {index} ('{variable.path}') has shape "
                f"{tuple(variable.shape)}, the file holds shape {tuple(value.shape)}. "
                f"Nothing was loaded. {_FIX}"
            )


def _assign(optimizer: Any, values: list[np.ndarray]) -> None:
    with _keras_private.eager_scope():
        for variable, value in zip(optimizer.variables, values, strict=True):
            variable.assign(value)


def load_optimizer_variables(optimizer: Any, state: AppliedRateState, store: Any) -> None:
    """Replaces ``Optimizer.load_own_variables``: everything, or a clear error."""
    source = _keras_private.describe_store(store)
    state.owner_load = None
    if not list(store.keys()):
        warnings.warn(
            f"{source} holds no state for {_describe(optimizer)} (the model was "
            "saved before it was compiled). The optimizer keeps its current "
            "state.",
            stacklevel=3,
        )
        return
    values = _read_values(optimizer, store, source)
    if not optimizer.built and len(values) > len(optimizer.variables):
        # Its slots do not exist yet. Keep everything and apply it in build().
        state.pending = PendingRestore(source=source, optimizer_values=values)
        state.owner_load = "deferred"
        return
    _check_fit(optimizer, values, source)
    _assign(optimizer, values)
    state.owner_load = "loaded"


def apply_pending(optimizer: Any, state: AppliedRateState) -> None:
    """Applies state loaded before the optimizer was built; called from build()."""
    pending, state.pending = state.pending, None
    if pending is None:
        return
    if pending.optimizer_values is not None:
        _check_fit(optimizer, pending.optimizer_values, pending.source)
        _assign(optimizer, pending.optimizer_values)
    state.assign_from_file(pending.cached)
