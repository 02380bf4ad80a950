"""Opt-in feature: the rates of the last K updates, kept on the device.

A ring buffer of ``size`` slots written by every applied update (update ``n``
goes to slot ``(n - 1) % size``, with ``n`` beside it), so that one read per
logging interval, or per ``steps_per_execution`` block, sees every step's rate
without a host round-trip per step.
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import numpy as np

from introspect_opt._common.names import COUNT_KEY, NO_UPDATE, STATE_ATTRIBUTE
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3 import dormant as _dormant
from introspect_opt._keras3.features import Entries, Feature, Update, register_feature
from introspect_opt._keras3.host import host_array
from introspect_opt._keras3.resolve import describe_optimizer, resolve_optimizer
from introspect_opt._keras3.state import AppliedRateState

RATES_KEY = "rate_history"
UPDATES_KEY = "rate_history_updates"


class _History(Feature):
    name = "history"
    keys = (RATES_KEY, UPDATES_KEY)
    # Cheap to keep, and what plots of a saved model show.
    created_by_files: ClassVar[bool] = True

    def create_dormant(self, optimizer: Any, state: AppliedRateState) -> None:
        rate_var, count_var = state.core()  # type: ignore[misc]
        state.rate_history_updates = _dormant.make(optimizer, UPDATES_KEY, count_var.dtype, 1)
        state.rate_history = _dormant.make(optimizer, RATES_KEY, rate_var.dtype, 1)

    def create(self, optimizer: Any, state: AppliedRateState, **options: Any) -> None:
        size = int(options["size"])
        rate_var, count_var = state.core()  # type: ignore[misc]
        updates = np.full((size,), NO_UPDATE, _numpy_dtype(count_var.dtype))
        state.rate_history_updates = state.new_variable(optimizer, UPDATES_KEY, updates)
        # The feature is on once its first key holds a value.
        rates = np.zeros((size,), _numpy_dtype(rate_var.dtype))
        state.rate_history = state.new_variable(optimizer, RATES_KEY, rates)

    def options_for(self, entries: Entries) -> dict[str, Any]:
        return {"size": len(entries[RATES_KEY])}

    def options_for_checkpoint(self) -> dict[str, Any] | None:
        return None  # the size is in the checkpoint, unread until restored

    def after_update(self, optimizer: Any, state: AppliedRateState, update: Update) -> None:
        rates, updates = state.rate_history, state.rate_history_updates

        def write() -> None:
            ops = keras.ops
            count_dtype, rate_dtype = _numpy_dtype(updates.dtype), _numpy_dtype(rates.dtype)
            size = ops.shape(rates)[0]  # a tensor for a dormant-capable buffer
            count = ops.cast(update.count, count_dtype)
            slot = ops.mod(ops.subtract(count, 1), ops.cast(size, count_dtype))
            here = ops.equal(ops.arange(size, dtype=count_dtype), slot)
            rates.assign(ops.where(here, ops.cast(update.rate, rate_dtype), _read(rates)))
            updates.assign(ops.where(here, count, _read(updates)))

        if _dormant.reshapable(rates):
            _dormant.when_on(rates, write)
        else:
            write()

    def check(self, entries: Entries) -> str | None:
        rates, updates = entries[RATES_KEY], entries[UPDATES_KEY]
        bad = rates.ndim != 1 or rates.shape != updates.shape or not rates.size
        if bad or updates.dtype.kind not in "iu":
            return (
                f"the rate history holds shapes {rates.shape} and {updates.shape} "
                f"({updates.dtype} update numbers), not two equal-length vectors "
                "(at least one entry) with integer update numbers"
            )
        return _misplaced_updates(updates, entries.get(COUNT_KEY))

    def assign(
        self,
        optimizer: Any,
        state: AppliedRateState,
        entries: Entries | None,
        owners: dict[int, int] | None = None,
    ) -> None:
        entries = entries or {}
        rates, updates = rebucket(
            entries.get(RATES_KEY),
            entries.get(UPDATES_KEY),
            len(host_array(state.rate_history)),
            _numpy_dtype(state.rate_history.dtype),
            _numpy_dtype(state.rate_history_updates.dtype),
        )
        state.rate_history.assign(rates)
        state.rate_history_updates.assign(updates)


HISTORY = register_feature(_History())


def _misplaced_updates(updates: np.ndarray, count: np.ndarray | None) -> str | None:
    """Why a history's update numbers cannot be what an optimizer wrote, or None.

    Update ``n`` is written to slot ``(n - 1) % size``, and ``n`` is at most
    the file's ``update_count`` (the last update); an empty slot holds -1.
    Checked before anything is assigned: a value that does not fit the
    optimizer's counter (2**64 - 1 as uint64, say) would otherwise fail
    halfway through the load.
    """
    limit = int(np.iinfo(np.int64).max)
    if count is not None and count.shape == () and count.dtype.kind in "iu":
        limit = min(limit, int(count))
    size = len(updates)
    wrong = [
        (slot, value)
        for slot, value in enumerate(updates.tolist())  # Python ints: exact for uint64
        if value != NO_UPDATE and not (1 <= value <= limit and (value - 1) % size == slot)
    ]
    if not wrong:
        return None
    shown = ", ".join(f"slot {slot}: {value}" for slot, value in wrong[:4])
    more = f" and {len(wrong) - 4} more" if len(wrong) > 4 else ""
    return (
        f"{UPDATES_KEY} holds update numbers no update wrote ({shown}{more}): each "
        f"slot holds {NO_UPDATE} (empty) or the number n of an update, from 1 to the "
        f"file's {COUNT_KEY} ({limit if limit >= 1 else 'no update yet'}), in slot "
        f"(n - 1) % {size}"
    )


def _numpy_dtype(dtype: Any) -> str:
    """A Keras, NumPy or TensorFlow dtype as a NumPy dtype name."""
    return str(keras.backend.standardize_dtype(getattr(dtype, "name", dtype)))


def _read(variable: Any) -> Any:
    """A variable's value in a traced step (inside jax.jit a Keras variable is read explicitly)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def rebucket(
    rates: np.ndarray | None,
    updates: np.ndarray | None,
    size: int,
    rate_dtype: Any,
    update_dtype: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """A history laid out for a buffer of ``size`` slots, newest entries kept."""
    new_rates = np.zeros((size,), dtype=keras.backend.standardize_dtype(rate_dtype))
    new_updates = np.full((size,), NO_UPDATE, dtype=keras.backend.standardize_dtype(update_dtype))
    if rates is None or updates is None:
        return new_rates, new_updates
    kept = sorted((int(u), r) for u, r in zip(updates, rates, strict=True) if u > 0)[-size:]
    for update, rate in kept:
        new_rates[(update - 1) % size] = rate
        new_updates[(update - 1) % size] = update
    return new_rates, new_updates


def check_size(size: Any, argument: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(
            f"{argument} must be a positive int (the number of most recent updates "
            f"to keep on the device); received {size!r}. Pick at least the number "
            "of steps between two reads, e.g. your `steps_per_execution`."
        )
    return int(size)


def history_size(state: AppliedRateState) -> int:
    """The buffer's size (or the size asked for before build); 0 without one."""
    if state.has(HISTORY.name):
        return len(host_array(state.rate_history))
    return int(state.requested.options.get(HISTORY.name, {}).get("size", 0))


def keep_rate_history(optimizer: Any, size: int) -> Any:
    """Keeps the learning rates of the last ``size`` updates on the device.

    Every applied update then also writes its rate into a fixed-size ring
    buffer (two small vectors of optimizer state), so the rates of every step
    can be read in one go, once per logging interval, instead of once per step.
    ``RateHistoryToTensorBoard`` calls this for you. The buffer is saved and
    restored with the optimizer (files stay interchangeable with the plain
    optimizer, which ignores it).

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
    size = check_size(size, "size")
    target = resolve_optimizer(optimizer, "keep_rate_history()")
    state = target._ensure_introspection_state()
    current = history_size(state)
    if current and current != size:
        raise ValueError(
            f"{describe_optimizer(target)} already keeps the last {current} rates; "
            f"received size={size}. The size cannot change once set: use the same "
            "size, or create a new optimizer."
        )
    state.enable(target, HISTORY.name, size=size)
    return target


def resize(optimizer: Any, size: int) -> bool:
    """Gives the buffer ``size`` slots, keeping the newest entries.

    Returns whether new variables were created (functions traced with the
    old buffer keep writing to it until retraced; a dormant-capable buffer,
    see ``_keras3.dormant``, is the same variable resized).
    """
    state = optimizer._ensure_introspection_state()
    if not state.has_variables:
        state.requested.options[HISTORY.name] = {"size": size}
        return False
    old = None
    if state.has(HISTORY.name):
        if len(host_array(state.rate_history)) == size:
            return False
        old = (host_array(state.rate_history), host_array(state.rate_history_updates))
        state.drop(HISTORY.name)
    created = state.enable(optimizer, HISTORY.name, size=size)
    if old is not None:
        with _keras_private.eager_scope():
            HISTORY.assign(optimizer, state, {RATES_KEY: old[0], UPDATES_KEY: old[1]})
    return bool(created)


def recorded_rates(optimizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """(update numbers, rates) in the buffer, oldest first; empty without one."""
    state = optimizer.__dict__.get(STATE_ATTRIBUTE)
    if state is None or not state.has(HISTORY.name):
        return np.zeros((0,), "int64"), np.zeros((0,), "float32")
    rates = host_array(state.rate_history)
    updates = host_array(state.rate_history_updates).astype("int64")
    done = int(host_array(optimizer.iterations))
    # Slots not written yet hold NO_UPDATE (-1); slots "from the future" can only
    # come from a checkpoint that restored iterations but not the buffer.
    valid = (updates > 0) & (updates <= done)
    order = np.argsort(updates[valid], kind="stable")
    return updates[valid][order], rates[valid][order]


def rates_since(optimizer: Any, last: int, done: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The recorded ``(updates, rates)`` after update ``last``, and how many are lost.

    Lost: of the updates ``last + 1 .. done``, those the history no longer
    holds (it keeps the newest only); what a reader that fell behind warns of.
    """
    updates, rates = recorded_rates(optimizer)
    new = updates > last
    updates, rates = updates[new], rates[new]
    lost = min((int(updates[0]) if updates.size else done + 1) - last - 1, done - last)
    return updates, rates, lost


def rate_history(obj: Any) -> tuple[np.ndarray, np.ndarray]:
    """The learning rates of the most recent updates, with their update numbers.

    Reads the on-device buffer that ``keep_rate_history`` (or
    ``RateHistoryToTensorBoard``) set up, in one read.

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
    return recorded_rates(resolve_optimizer(obj, "rate_history()"))
