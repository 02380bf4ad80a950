"""Loading and saving tf_keras optimizer state: all or nothing, nothing lost.

tf_keras's own loaders are lenient in ways that lose state silently:

* ``.keras`` / ``.weights.h5``: ``Optimizer.load_own_variables`` skips *all*
  optimizer state, with a log message only, when the entry count differs
  (for instance when the optimizer is not built yet).
* HDF5 (``model.save("m.h5")``) calls ``optimizer.set_weights``; the new
  optimizer's version zips (extra or missing entries pass silently) and
  assigns entry by entry before it checks the next shape, and
  ``load_model`` turns any ``ValueError`` from it into a log message.

Here every entry is read and checked first, then everything is assigned. A
refused load raises ``RefusedLoad``, as in Keras 3; ``set_weights`` raises
``RefusedWeights``, no ``ValueError``, so that the HDF5 loader cannot swallow it.
The cached rate travels in ``.keras`` / ``.weights.h5`` files as a group of its
own next to the optimizer's (``<optimizer path>/_introspection_state/vars``),
which plain optimizers never read, with the manifest (``_tf_keras.manifest``):
a file another class or slot layout wrote is refused before anything else is
checked; formats that only hold the optimizer's own
variables (HDF5 model files, ``set_weights``) leave the cache stale, and the
rate is then derived from the restored step counter.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from introspect_opt._common.errors import (
    KeepState,
    RefusedLoad,
    RefusedWeights,
    refused_load,
)
from introspect_opt._common.manifest import Manifest
from introspect_opt._common.names import (
    CORE_KEYS,
    COUNT_KEY,
    MANIFEST_KEY,
    RATE_KEY,
    STATE_ATTRIBUTE,
)
from introspect_opt._common.protocols import WeightsStore
from introspect_opt._tf_keras import compat as private
from introspect_opt._tf_keras import manifest as manifest
from introspect_opt._tf_keras.state import AppliedRateState

describe = manifest.name


def _kind(dtype: np.dtype[Any]) -> str | None:
    if np.issubdtype(dtype, np.floating):
        return "float"
    if np.issubdtype(dtype, np.integer):
        return "int"
    if np.issubdtype(dtype, np.bool_):
        return "bool"
    return None


def _lossless(array: np.ndarray, target: np.dtype[Any]) -> bool:
    """Whether ``array`` converts to ``target`` (int <-> float) without changing any value.

    Plain tf_keras assigns whatever ``variable.assign`` casts: 2.0 into the
    int64 step counter (as a ``LossScaleOptimizer``'s ``set_weights`` passes
    it on), but also 2.5 (truncated to 2), or an integer a float32 slot
    cannot hold exactly. Only the conversions that lose nothing are accepted.
    """
    kinds = (_kind(array.dtype), _kind(target))
    if kinds == ("float", "int"):
        limits = np.iinfo(target)
        # Both bounds are powers of two (or 0), exact in every float dtype.
        low, high = float(limits.min), float(int(limits.max) + 1)
        with np.errstate(invalid="ignore"):
            return bool(
                np.all(np.isfinite(array))
                and np.all(array == np.trunc(array))
                and np.all(array >= low)
                and np.all(array < high)
            )
    if kinds == ("int", "float"):
        # Every integer up to 2**(mantissa bits + 1) is exact; larger ones are
        # checked one by one, in Python integers.
        exact = 2 ** (np.finfo(target).nmant + 1)
        large = array[(array > exact) | (array < -exact)]
        for value in large.reshape(-1).tolist():
            with np.errstate(over="ignore"):
                converted = float(target.type(value))
            if not np.isfinite(converted) or int(converted) != value:
                return False
        return True
    return False


def _first_lossy(array: np.ndarray, target: np.dtype[Any]) -> Any:
    """The first value of ``array`` that ``_lossless`` refuses, for error messages."""
    for value in array.reshape(-1):
        if not _lossless(np.asarray(value), target):
            return value.item()
    return array.reshape(-1)[0].item()  # pragma: no cover - only called on refusals


def _read(value: Any) -> np.ndarray:
    """A file entry, tensor, variable or array as a NumPy array (read once)."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError):  # e.g. a distributed variable
        import tensorflow as tf

        return np.asarray(tf.identity(value).numpy())


def _check_arrays(
    optimizer: Any, variables: Sequence[Any], arrays: Sequence[np.ndarray], source: str
) -> list[np.ndarray]:
    """Checks shapes and dtypes against the variables; returns arrays ready to assign."""
    problems = []
    for index, (variable, array) in enumerate(zip(variables, arrays, strict=True)):
        target = np.dtype(variable.dtype.as_numpy_dtype)
        if tuple(array.shape) != tuple(variable.shape):
            found = f"shape {array.shape}, expected {tuple(variable.shape)}"
        elif _kind(array.dtype) is None:
            found = f"dtype {array.dtype}, expected {target}"
        elif _kind(array.dtype) != _kind(target) and not _lossless(array, target):
            found = (
                f"dtype {array.dtype}, expected {target}, and its values do not convert "
                f"without loss (e.g. {_first_lossy(array, target)!r})"
            )
        else:
            continue
        problems.append(f"entry {index} ({variable.name}) has {found}")
    if problems:
        raise refused_load(
            f"the state of {describe(optimizer)}",
            source,
            "; ".join(problems) + ". Nothing was loaded into the optimizer. The file was "
            "written by a different optimizer (class or arguments) or for a different model.",
            keep_state=KeepState.TF_KERAS,
        )
    dtypes = [np.dtype(v.dtype.as_numpy_dtype) for v in variables]
    return [array.astype(dtype) for array, dtype in zip(arrays, dtypes, strict=True)]


def _count_error(optimizer: Any, source: str, in_file: int, ours: int) -> RefusedLoad:
    text = (
        f"the file holds {in_file} optimizer variables, this optimizer has {ours}. "
        "Nothing was loaded into the optimizer (plain tf_keras would skip it all with "
        "only a log message). "
    )
    if ours <= 1 < in_file:
        text += (
            "This optimizer has no slot variables yet (it is not built): "
            f"{optimizer._introspect_build_hint}"
        )
    else:
        text += (
            "The file was written by a different optimizer (class or arguments, "
            "e.g. momentum) or for a different model: load it with the optimizer "
            "it was saved with."
        )
    return refused_load(
        f"the state of {describe(optimizer)}", source, text, keep_state=KeepState.TF_KERAS
    )


def _assign_all(variables: Sequence[Any], arrays: Sequence[np.ndarray]) -> None:
    import tensorflow as tf

    with tf.init_scope():
        for variable, array in zip(variables, arrays, strict=True):
            variable.assign(array)


def set_weights(optimizer: Any, weights: Any) -> None:
    """``optimizer.set_weights`` for built optimizers, all or nothing.

    The file or list carries no cached rate: it is marked stale, and
    ``current_learning_rate`` derives the rate from the restored counter. A
    refusal is a ``RefusedWeights``: tf_keras's HDF5 ``load_model`` would turn a
    ``ValueError`` into a log line.
    """
    variables = optimizer._introspect_plain_variables()
    arrays = [_read(w) for w in weights]
    source = "the weights passed to set_weights() (from an HDF5 model file, if loading one)"
    try:
        if len(arrays) != len(variables):
            raise _count_error(optimizer, source, len(arrays), len(variables))
        ready = _check_arrays(optimizer, variables, arrays, source)
    except RefusedLoad as error:
        raise RefusedWeights(str(error)) from None
    _assign_all(variables, ready)
    optimizer._introspect_state().forget()


def _state_group(parent: Any) -> Any:
    """The ``_introspection_state/vars`` group inside an optimizer's group, or None."""
    if STATE_ATTRIBUTE not in parent or private.ENTRIES_GROUP not in parent[STATE_ATTRIBUTE]:
        return None
    return parent[STATE_ATTRIBUTE][private.ENTRIES_GROUP]


def _wrapped_state_group(parent: Any, store: WeightsStore) -> Any:
    """The cache of the optimizer a ``LossScaleOptimizer`` wrapped, when ``store`` is its copy.

    A mixed-precision model's file holds the wrapper's entries (a copy of the
    wrapped optimizer's variables) where a float32 model's optimizer looks,
    and the wrapped optimizer's own entries and cache one level down. The
    cache belongs to the entries only if both copies are identical.
    """
    inner = parent.get(private.LOSS_SCALE_INNER_GROUP)
    if inner is None or not hasattr(inner, "keys") or private.ENTRIES_GROUP not in inner:
        return None
    group = _state_group(inner)
    if group is None or sorted(inner[private.ENTRIES_GROUP].keys()) != sorted(store.keys()):
        return None
    for key in store:
        ours, theirs = _read(store[key]), _read(inner[private.ENTRIES_GROUP][key])
        if ours.dtype != theirs.dtype or not np.array_equal(ours, theirs):
            return None
    return group


def _state_entries(
    store: WeightsStore, source: str
) -> tuple[dict[str, np.ndarray] | None, Manifest | None]:
    """The cached rate and manifest saved next to an optimizer's entries, validated.

    None for what the file does not hold (a plain optimizer's file holds neither,
    one of introspect-opt 0.2 no manifest).
    """
    parent = private.h5_parent(store)
    if parent is None:
        return None, None
    group = _state_group(parent)
    if group is None:
        group = _wrapped_state_group(parent, store)
    if group is None:
        return None, None
    keys = sorted(k for k in group if k != MANIFEST_KEY)
    recorded = None
    if MANIFEST_KEY in group:
        recorded = manifest.decode(_read(group[MANIFEST_KEY]), source)
    entries = {key: _read(group[key]) for key in keys}
    valid = (
        keys == sorted(CORE_KEYS)
        and all(entries[k].shape == () for k in keys)
        and _kind(entries[RATE_KEY].dtype) == "float"
        and _kind(entries[COUNT_KEY].dtype) == "int"
    )
    if not valid:
        found = {k: f"{v.dtype}{list(v.shape)}" for k, v in entries.items()}
        raise refused_load(
            "the applied learning rate",
            f"{source}, group '{group.name}'",
            f"expected a float scalar '{RATE_KEY}' and an integer scalar '{COUNT_KEY}', "
            f"found {found}. Nothing was loaded into the optimizer. The file is damaged "
            "or was not written by introspect_opt.",
            keep_state=KeepState.TF_KERAS,
        )
    return entries, recorded


def save_keras_entries(optimizer: Any, store: WeightsStore) -> None:
    """Writes the cached rate beside the optimizer's own entries (h5 stores only)."""
    parent = private.h5_parent(store)
    if parent is None:
        return  # npz weights format: the rate is derived on load
    group = parent.require_group(STATE_ATTRIBUTE).require_group(private.ENTRIES_GROUP)
    for key, value in optimizer._introspect_state().values().items():
        group[key] = value
    group[MANIFEST_KEY] = manifest.describe(optimizer).encode()


def load_keras_entries(optimizer: Any, store: WeightsStore) -> None:
    """``load_own_variables`` for ``.keras`` / ``.weights.h5``: check all, then assign."""
    source = private.describe_store(store)
    state: AppliedRateState = optimizer._introspect_state()
    variables = optimizer._introspect_plain_variables()
    keys = list(store.keys())
    cached, recorded = _state_entries(store, source)
    if recorded is not None:
        # Identity first: another class or layout is refused, built or not.
        manifest.check_identity(optimizer, recorded, source)
    if not keys:
        if cached is not None:
            raise refused_load(
                f"the state of {describe(optimizer)}",
                source,
                f"the file holds a cached rate ({STATE_ATTRIBUTE}) but no optimizer "
                "variables. Nothing was loaded into the optimizer. The file is damaged.",
                keep_state=KeepState.TF_KERAS,
            )
        warnings.warn(
            f"{source} holds no optimizer state of {describe(optimizer)}'s own; it keeps "
            "its current variables (a LossScaleOptimizer around it loads a float32 "
            "model's entries into them itself).",
            stacklevel=4,
        )
        # A LossScaleOptimizer around this one loads a float32 model's file into
        # its variables just before (and hands this one nothing): a step
        # counter that moved away from the cached update makes the cache stale.
        if int(_read(optimizer.iterations)) != int(state.values()[COUNT_KEY]):
            state.forget()
        return
    if sorted(keys) != sorted(str(i) for i in range(len(keys))):
        raise refused_load(
            f"the state of {describe(optimizer)}",
            source,
            f"expected entries '0' to '{len(keys) - 1}', found {sorted(keys)}. Nothing was "
            "loaded into the optimizer. The file is damaged or was not written by tf_keras.",
            keep_state=KeepState.TF_KERAS,
        )
    arrays = [_read(store[str(i)]) for i in range(len(keys))]
    if recorded is not None:
        manifest.check_recorded(optimizer, recorded, arrays, source)
    if len(arrays) == 1 < len(variables):
        # Saved before the optimizer was built (e.g. right after `compile`): only the
        # step counter. Fine if it never updated: its slots were the initial
        # values this optimizer still holds. Otherwise its slots are missing.
        counter = _check_arrays(optimizer, variables[:1], arrays, source)
        if int(counter[0]) != 0:
            raise refused_load(
                f"the state of {describe(optimizer)}",
                source,
                f"the file holds the step counter ({int(counter[0])}) of an optimizer that "
                "was not built, without its slot variables (momentum, moments, ...). "
                "Nothing was loaded into the optimizer. Save the model again after its "
                "optimizer is built (after one training step, or "
                "`model.optimizer.build(model.trainable_variables)`).",
                keep_state=KeepState.TF_KERAS,
            )
        _assign_all(variables[:1], counter)
        state.assign_values(cached)
        return
    if len(arrays) != len(variables):
        raise _count_error(optimizer, source, len(arrays), len(variables))
    ready = _check_arrays(optimizer, variables, arrays, source)
    _assign_all(variables, ready)
    state.assign_values(cached)
