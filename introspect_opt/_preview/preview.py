"""Previewing the learning rate an optimizer applies, at any list of updates, and plotting it.

``preview_learning_rates`` answers "what will ``current_learning_rate`` read
after update ``n``?" for many ``n`` at once, without training: it evaluates the
rate source the way the update step does (the schedule at the raw micro-step
counter, times the plateau multiplier). ``plot_learning_rate`` draws that curve
with the rates already applied on top, with the Keras-free drawing code that
``introspect-opt plot`` uses too (``introspect_opt_cli._draw``).
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from introspect_opt._common.errors import describe_value
from introspect_opt._features import history as _history
from introspect_opt._keras3 import compat as _keras_private
from introspect_opt._keras3.host import host_array
from introspect_opt._keras3.mixin import IntrospectableOptimizer
from introspect_opt._keras3.resolve import (
    current_learning_rate,
    is_multi_optimizer,
    optimizer_of,
)
from introspect_opt_cli import _draw


@dataclass(frozen=True)
class _RateSource:
    """What a preview needs to know about an optimizer, schedule or float."""

    # Raw micro-step counters (int64, 1-D) -> the rate Keras passes to update_step.
    evaluate: Callable[[np.ndarray], np.ndarray]
    accumulation: int
    optimizer: Any = None  # the optimizer itself, when there is one
    holder: Any = None  # what to read current_learning_rate from (model or optimizer)
    label: str = ""


def _as_rate_array(value: Any, what: str) -> np.ndarray:
    array = host_array(value)
    if array.dtype.kind in "iu":
        # The update step caches integer rates in floatx, too.
        return array.astype(keras.config.floatx())
    if array.dtype.kind != "f":
        raise TypeError(
            f"The learning rate from {what} is {describe_value(value)}, not a number. "
            "A schedule must return a float tensor; a callable, a float."
        )
    return array


def _constant(value: Any, what: str) -> Callable[[np.ndarray], np.ndarray]:
    rate = _as_rate_array(value, what)
    if rate.shape != ():
        raise ValueError(
            f"The learning rate from {what} has shape {rate.shape}; expected a scalar."
        )
    return lambda steps: np.full(steps.shape, rate, dtype=rate.dtype)


def _scalar_value(schedule: Any, step: int) -> np.ndarray:
    return _as_rate_array(schedule(keras.ops.convert_to_tensor(np.int64(step))), repr(schedule))


def _agrees_with_scalar_calls(schedule: Any, steps: np.ndarray, values: np.ndarray) -> bool:
    """Spot-checks a vectorised result against one-step calls of the schedule.

    A schedule built from elementwise ops gives the same values either way (up
    to a few ulps where a vectorised kernel rounds differently); one that
    reduces over its input, or branches on it in Python, does not.
    """
    if values.shape != steps.shape or values.dtype.kind != "f":
        return False
    picks = sorted({0, len(steps) // 2, len(steps) - 1})
    reference = np.stack([_scalar_value(schedule, int(steps[i])) for i in picks])
    if reference.shape != (len(picks),):
        return False
    scale = float(np.max(np.abs(reference), initial=0.0))
    return bool(np.allclose(values[picks], reference, rtol=1e-5, atol=1e-6 * scale, equal_nan=True))


def _mapped(schedule: Any, steps: np.ndarray) -> Any:
    """The schedule evaluated one step at a time, but in one compiled call.

    ``ops.cond`` on a vector of steps fails (``CosineDecay`` with warmup uses
    it); per-element mapping gives each step its own scalar evaluation. Eager
    one-step calls cost ~1 ms on TensorFlow and ~50 ms on JAX, so thousands of
    them would be slow.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.vectorized_map(
            schedule, tf.constant(steps, dtype=tf.int64), fallback_to_while_loop=True
        )
    if backend == "jax":
        import jax

        return jax.jit(jax.vmap(schedule))(keras.ops.convert_to_tensor(steps))
    return None  # torch.func.vmap rejects the data-dependent `if` of ops.cond.


def _evaluate_schedule(schedule: Any, steps: np.ndarray) -> np.ndarray:
    """``schedule(step)`` for every raw step, vectorised when the schedule allows."""
    if steps.size == 0:
        return np.zeros((0,), dtype=keras.config.floatx())
    attempts: list[Callable[[], Any]] = [
        lambda: schedule(keras.ops.convert_to_tensor(steps)),
        lambda: _mapped(schedule, steps),
    ]
    for attempt in attempts:
        try:
            result = attempt()
            if result is None:
                continue
            values = np.asarray(keras.ops.convert_to_numpy(result))
            if values.dtype.kind in "iu":
                values = values.astype(keras.config.floatx())
            if _agrees_with_scalar_calls(schedule, steps, values):
                return values
        except Exception:  # any failure: try the next, slower way
            continue
    return np.stack([_scalar_value(schedule, int(step)) for step in steps])


def _unwrap_optimizer(optimizer: Any, function: str, argument: str) -> Any:
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    if is_multi_optimizer(optimizer):
        raise TypeError(
            f"{function}() received a {type(optimizer).__name__} as {argument}; it "
            "holds several optimizers, each with its own rate: pass one of them."
        )
    return optimizer


def _resolve(source: Any, function: str, argument: str = "source") -> _RateSource:
    """Reads an optimizer, a compiled model, a schedule or a float as a rate source."""
    schedules = keras.optimizers.schedules
    if isinstance(source, schedules.LearningRateSchedule):
        return _RateSource(
            lambda steps: _evaluate_schedule(source, steps), 1, label=type(source).__name__
        )
    if isinstance(source, numbers.Real) and not isinstance(source, (bool, np.bool_)):
        # Keras keeps a float rate in a floatx variable.
        rate = np.asarray(source, dtype=keras.config.floatx())
        return _RateSource(_constant(rate, repr(source)), 1, label=f"constant {source:g}")
    holder = source
    if isinstance(source, keras.Model) and getattr(source, "optimizer", None) is None:
        raise ValueError(
            f"{function}() received as {argument} the model {source.name!r}, which "
            "has no optimizer: compile it first, or pass the optimizer or schedule."
        )
    optimizer = optimizer_of(source)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            f"{function}() expects {argument} to be a Keras optimizer, a compiled "
            "model, a keras.optimizers.schedules.LearningRateSchedule or a float; "
            f"received {describe_value(source)}."
        )
    optimizer = _unwrap_optimizer(optimizer, function, argument)
    rate = _keras_private.learning_rate_source(optimizer)
    what = f"{type(optimizer).__name__} '{optimizer.name}'"
    evaluate: Callable[[np.ndarray], np.ndarray]
    if isinstance(rate, schedules.LearningRateSchedule):
        evaluate, label = (lambda steps: _evaluate_schedule(rate, steps)), type(rate).__name__
    elif isinstance(rate, keras.Variable):
        evaluate, label = _constant(rate, what), "constant"
    elif callable(rate):
        evaluate, label = _constant(rate(), what), "callable"
    else:
        evaluate, label = _constant(rate, what), "constant"
    return _RateSource(
        evaluate,
        accumulation=int(optimizer.gradient_accumulation_steps or 1),
        optimizer=optimizer,
        holder=holder,
        label=f"{type(optimizer).__name__} '{optimizer.name}', {label}",
    )


def _as_iterations(iterations: Any, function: str, argument: str = "iterations") -> np.ndarray:
    """Validates update numbers: integers >= 0, any shape."""
    if isinstance(iterations, (bool, np.bool_)):
        array = np.asarray(iterations)
    elif hasattr(iterations, "dtype") and not isinstance(iterations, (np.ndarray, np.generic)):
        array = host_array(iterations)  # a tensor or variable
    else:
        try:
            array = np.asarray(iterations)
        except (TypeError, ValueError):
            array = np.asarray(None, dtype=object)
    if array.size == 0 and array.dtype.kind == "f":
        array = array.astype(np.int64)  # `[]` is float64 to NumPy
    if array.dtype.kind not in "iu":
        raise TypeError(
            f"{function}() expects {argument} to be integers (values of "
            f"optimizer.iterations, the number of updates applied); received "
            f"{describe_value(iterations)} with dtype {array.dtype}. Pass e.g. "
            "np.arange(1000), a list of ints, or cast with .astype(int)."
        )
    if array.size and array.min() < 0:
        position = int(np.argmin(array.ravel() >= 0))
        raise ValueError(
            f"{function}() expects {argument} >= 0 (0 = before the first update); "
            f"received {int(array.ravel()[position])} at position {position}."
        )
    return array.astype(np.int64)


def _rates(resolved: _RateSource, iterations: np.ndarray) -> np.ndarray:
    return _draw.rates_at_updates(resolved.evaluate, iterations, resolved.accumulation)


def preview_learning_rates(source: Any, iterations: Any) -> np.ndarray:
    """Previews the rate ``current_learning_rate`` will read after each of the given updates.

    For each ``n`` in ``iterations``: what ``optimizer.current_learning_rate``
    reads when ``optimizer.iterations == n``, computed without training. For
    ``n >= 1`` that is the rate the ``n``-th update applies, ``lr(n*k - 1)``,
    where ``k`` is ``gradient_accumulation_steps`` (or 1), because Keras
    evaluates the schedule at the raw micro-step counter; for ``n == 0``, the
    rate the first update will use, ``lr(k - 1)``. A plateau multiplier
    (``ScaleLearningRateOnPlateau``) is part of the rate.

    It is a forecast from the optimizer's rate source as it is *now* (schedule,
    float rate, multiplier): for updates already applied, a rate changed since
    (``ReduceLROnPlateau``, ``LearningRateScheduler``) makes the recorded
    values, not these, what was applied.

    A schedule made of elementwise ops (``ExponentialDecay``,
    ``PiecewiseConstantDecay``, ``PolynomialDecay``, ``InverseTimeDecay``,
    ``CosineDecay`` without warmup, ``CosineDecayRestarts``) is evaluated in one
    call on all steps. One that branches per step (``CosineDecay`` with warmup)
    is mapped over the steps in one compiled call on TensorFlow and JAX, and
    called once per distinct step on PyTorch. Each fast result is checked
    against single-step calls before it is used. Values equal
    ``schedule(step)`` up to a few ulps where a vectorised kernel rounds
    differently, as the compiled train step itself can.

    Args:
        source: A Keras optimizer (introspectable or not; a
            ``LossScaleOptimizer`` is looked through), a compiled model, a
            ``keras.optimizers.schedules.LearningRateSchedule`` (treated as an
            optimizer without gradient accumulation or multiplier), or a float.
        iterations: Integers ``>= 0``: values of ``optimizer.iterations``, in
            any order and shape (a list, a NumPy array, ``range``, a tensor).

    Returns:
        A NumPy array of the shape of ``iterations``, in the dtype of the rate
        (``float32`` for Keras schedules).

    Raises:
        TypeError: ``source`` is none of the above, or ``iterations`` are not
            integers.
        ValueError: ``iterations`` holds a negative number, or ``source`` is a
            model without optimizer.

    Examples:
        >>> import keras, introspect_opt
        >>> schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
        >>> introspect_opt.preview_learning_rates(schedule, [0, 1, 2, 3]).round(6)
        array([0.1  , 0.1  , 0.05 , 0.025], dtype=float32)
        >>> opt = introspect_opt.IntrospectableSGD(schedule, gradient_accumulation_steps=2)
        >>> introspect_opt.preview_learning_rates(opt, [1, 2]).round(6)  # s(1), s(3)
        array([0.05  , 0.0125], dtype=float32)
    """
    resolved = _resolve(source, "preview_learning_rates")
    steps = _as_iterations(iterations, "preview_learning_rates")
    return _rates(resolved, steps)


def applied_learning_rates(source: Any, iterations: Any) -> np.ndarray:
    """Deprecated name of :func:`preview_learning_rates` (it is a forecast).

    Args:
        source: As for :func:`preview_learning_rates`.
        iterations: As for :func:`preview_learning_rates`.

    Returns:
        As :func:`preview_learning_rates`.

    Examples:
        >>> import warnings, introspect_opt
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     introspect_opt.applied_learning_rates(0.1, [0, 1]).round(6)
        array([0.1, 0.1], dtype=float32)
    """
    warnings.warn(
        "introspect_opt.applied_learning_rates() is renamed preview_learning_rates() "
        "(it forecasts from the schedule); the old name will be removed in 0.3.",
        DeprecationWarning,
        stacklevel=2,
    )
    return preview_learning_rates(source, iterations)


def _plot_grid(iterations: Any, end_hint: int) -> np.ndarray:
    if iterations is None:
        end = max(_draw.DEFAULT_PLOT_END, end_hint)
    elif isinstance(iterations, numbers.Integral) and not isinstance(iterations, (bool, np.bool_)):
        end = int(iterations)
        if end < 1:
            raise ValueError(
                "plot_learning_rate() expects iterations, the last update to plot, to "
                f"be >= 1; received {end}."
            )
    else:
        return np.unique(_as_iterations(iterations, "plot_learning_rate"))
    return _draw.update_grid(end)


def _applied_points(applied: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        steps, rates = applied
    except (TypeError, ValueError):
        raise TypeError(
            "plot_learning_rate() expects applied to be a pair (iterations, rates) "
            f"of equal-length sequences; received {describe_value(applied)}."
        ) from None
    steps = _as_iterations(steps, "plot_learning_rate", "applied[0] (iterations)").ravel()
    rates = np.asarray(keras.ops.convert_to_numpy(rates) if hasattr(rates, "dtype") else rates)
    if rates.dtype.kind not in "iuf" or rates.ravel().shape != steps.shape:
        raise ValueError(
            "plot_learning_rate() expects applied[1] (rates) to be numbers, one per "
            f"iteration in applied[0] ({steps.size}); received {describe_value(applied[1])}."
        )
    return steps, rates.ravel().astype(np.float64)


def _recorded_points(
    resolved: _RateSource,
) -> tuple[np.ndarray, np.ndarray, tuple[int, float] | None]:
    """The rates recorded on the device, and the current one, for an introspectable optimizer."""
    optimizer = resolved.optimizer
    if not isinstance(optimizer, IntrospectableOptimizer):
        return np.zeros(0, np.int64), np.zeros(0), None
    steps, rates = _history.recorded_rates(optimizer)
    current = None
    count = int(host_array(optimizer.iterations))
    if count > 0:
        rate = current_learning_rate(resolved.holder)
        current = (count, float(host_array(rate)))
    return np.asarray(steps, np.int64), np.asarray(rates, np.float64), current


def plot_learning_rate(
    source: Any,
    path: str | os.PathLike[str],
    *,
    iterations: Any = None,
    applied: Any = None,
    title: str | None = None,
) -> Path:
    r"""Draws the whole learning-rate schedule, with the rates already applied, to a PNG.

    The line is :func:`preview_learning_rates` over the plotted range: the rate
    ``current_learning_rate`` reads after each update. On top, as markers, the
    rates actually applied: by default, for an introspectable optimizer, the
    last updates it keeps on the device (see its history option) and the
    current point ``(iterations, current_learning_rate)``; or the pairs you pass
    as ``applied`` (e.g. read from ``History`` or a CSV log). Uses
    matplotlib's Agg renderer without touching ``pyplot``'s global state.

    Args:
        source: What :func:`preview_learning_rates` accepts: an optimizer, a
            compiled model, a schedule or a float.
        path: Where to write the PNG.
        iterations: The updates to plot: an int ``N`` for ``0..N`` (sampled at
            4,096 evenly spaced points when longer), or a sequence of update
            numbers. Defaults to ``0..max(1000, 2 * optimizer.iterations)``.
        applied: Optional ``(iterations, rates)`` pair of equal-length
            sequences to overlay instead of the optimizer's recorded ones;
            ``([], [])`` for none.
        title: The plot title; defaults to a description of ``source``.

    Returns:
        ``path``, as a ``pathlib.Path``.

    Raises:
        ImportError: matplotlib is not installed (``pip install matplotlib``,
            or the ``plot`` extra: ``pip install ".[plot]"`` in a checkout).
        TypeError: ``source``, ``path``, ``iterations`` or ``applied`` has the
            wrong type.
        ValueError: ``iterations`` or ``applied`` holds invalid values.

    Examples:
        >>> import pathlib, tempfile, keras, introspect_opt
        >>> schedule = keras.optimizers.schedules.CosineDecay(
        ...     0.0, 900, warmup_target=0.1, warmup_steps=100)
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "schedule.png"
        >>> introspect_opt.plot_learning_rate(schedule, out) == out
        True
        >>> out.read_bytes()[:4]
        b'\x89PNG'
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"plot_learning_rate() expects path to be a file path; received {describe_value(path)}."
        )
    _draw.require_matplotlib("plot_learning_rate()")
    resolved = _resolve(source, "plot_learning_rate")
    current: tuple[int, float] | None = None
    if applied is None:
        applied_steps, applied_rates, current = _recorded_points(resolved)
    else:
        applied_steps, applied_rates = _applied_points(applied)
    done = [int(applied_steps.max(initial=0)), current[0] if current else 0]
    grid = _plot_grid(iterations, 2 * max(done))
    return _draw.draw_learning_rate(
        path,
        grid,
        _rates(resolved, grid),
        title=resolved.label if title is None else title,
        applied_steps=applied_steps,
        applied_rates=applied_rates,
        current=current,
    )
