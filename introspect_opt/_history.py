"""Opt-in: the rates of the last K updates, kept on the device.

A ring buffer of ``size`` slots written by every applied update (update ``n``
goes to slot ``(n - 1) % size``, with ``n`` beside it), so that one read per
logging interval, or per ``steps_per_execution`` block, sees every step's rate
without a host round-trip per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _factory, _keras_private
from ._state import HISTORY_RATES_KEY, HISTORY_UPDATES_KEY, host_array, rebucket


def _check_size(size: Any, argument: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(
            f"{argument} must be a positive int (the number of most recent updates "
            f"to keep on the device); received {size!r}. Pick at least the number "
            "of steps between two reads, e.g. your `steps_per_execution`."
        )
    return int(size)


def keep_rate_history(optimizer: Any, size: int) -> Any:
    """Keeps the learning rates of the last ``size`` updates on the device.

    Every applied update then also writes its rate into a fixed-size ring
    buffer (two small vectors of optimizer state), so the rates of every step
    can be read in one go, once per logging interval, instead of once per step.
    ``LearningRateLogger(every_step=True)`` calls this for you. The buffer is
    saved and restored with the optimizer (files stay interchangeable with the
    plain optimizer, which ignores it).

    Args:
        optimizer: An introspectable optimizer (or a ``LossScaleOptimizer``
            around one, or a compiled model).
        size: How many of the most recent updates to keep, a positive int: at
            least the number of steps between two reads.

    Returns:
        The introspectable optimizer.

    Raises:
        ValueError: ``size`` is not a positive int, or differs from the size
            this optimizer already keeps.
        TypeError: ``optimizer`` is not (and holds no) introspectable optimizer.

    Examples:
        >>> import keras, introspect_opt
        >>> schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
        >>> opt = introspect_opt.keep_rate_history(introspect_opt.IntrospectableSGD(schedule), 4)
        >>> w = keras.Variable([1.0])
        >>> for _ in range(6):
        ...     _ = opt.apply_gradients([(keras.ops.ones((1,)), w)])
        >>> steps, rates = introspect_opt.rate_history(opt)
        >>> steps.tolist(), [round(float(r), 5) for r in rates]
        ([3, 4, 5, 6], [0.025, 0.0125, 0.00625, 0.00313])
    """
    size = _check_size(size, "size")
    target = _factory.resolve_optimizer(optimizer, "keep_rate_history()")
    state = target._ensure_introspection_state()
    current = state.history_size or state.requested.history
    if current and current != size:
        raise ValueError(
            f"{type(target).__name__} '{target.name}' already keeps the last "
            f"{current} rates; received size={size}. The size cannot change once "
            "set: use the same size, or create a new optimizer."
        )
    if state.has_variables:
        state.create_feature(target, "history", size)
    else:
        state.requested.history = size
    return target


def resize(optimizer: Any, size: int) -> None:
    """Replaces the buffer with one of ``size`` slots, keeping the newest entries.

    Functions traced with the old buffer keep writing to it until retraced
    (``LearningRateLogger`` retraces ``fit``'s train function).
    """
    state = optimizer._ensure_introspection_state()
    if not state.has_variables:
        state.requested.history = size
        return
    entries = {}
    if state.rate_history is not None:
        entries = {
            HISTORY_RATES_KEY: host_array(state.rate_history),
            HISTORY_UPDATES_KEY: host_array(state.rate_history_updates),
        }
    state.rate_history = state.rate_history_updates = None
    state.create_feature(optimizer, "history", size)
    rates, updates = rebucket(
        entries.get(HISTORY_RATES_KEY),
        entries.get(HISTORY_UPDATES_KEY),
        size,
        state.rate_history.dtype,
        state.rate_history_updates.dtype,
    )
    with _keras_private.eager_scope():
        state.rate_history.assign(rates)
        state.rate_history_updates.assign(updates)


def recorded_rates(optimizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """(update numbers, rates) in the buffer, oldest first; empty without one."""
    state = optimizer.__dict__.get("_introspection_state")
    if state is None or state.rate_history is None:
        return np.zeros((0,), "int64"), np.zeros((0,), "float32")
    rates = host_array(state.rate_history)
    updates = host_array(state.rate_history_updates).astype("int64")
    done = int(host_array(optimizer.iterations))
    # Slots not written yet hold NO_UPDATE (-1); slots "from the future" can only
    # come from a checkpoint that restored iterations but not the buffer.
    valid = (updates > 0) & (updates <= done)
    order = np.argsort(updates[valid], kind="stable")
    return updates[valid][order], rates[valid][order]


def rate_history(obj: Any) -> tuple[np.ndarray, np.ndarray]:
    """The learning rates of the most recent updates, with their update numbers.

    Reads the on-device buffer that ``keep_rate_history`` (or
    ``LearningRateLogger(every_step=True)``) set up, in one read.

    Args:
        obj: An introspectable optimizer, a ``LossScaleOptimizer`` around one,
            or a compiled model (on JAX, use the model inside ``fit``).

    Returns:
        Two NumPy arrays of equal length, oldest first: the update numbers
        (``n`` is the value ``optimizer.iterations`` had right after that
        update) and the rate each of those updates applied, bit for bit. Both
        are empty when no history is kept.

    Raises:
        TypeError: ``obj`` is not (and holds no) introspectable optimizer.

    Examples:
        >>> import keras, introspect_opt
        >>> opt = introspect_opt.keep_rate_history(introspect_opt.IntrospectableSGD(0.1), 8)
        >>> w = keras.Variable([1.0])
        >>> _ = opt.apply_gradients([(keras.ops.ones((1,)), w)])
        >>> opt.learning_rate = 0.05
        >>> _ = opt.apply_gradients([(keras.ops.ones((1,)), w)])
        >>> steps, rates = introspect_opt.rate_history(opt)
        >>> steps.tolist(), [round(float(r), 6) for r in rates]
        ([1, 2], [0.1, 0.05])
    """
    return recorded_rates(_factory.resolve_optimizer(obj, "rate_history()"))
