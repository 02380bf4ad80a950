"""The learning-rate plot, drawn from arrays: no Keras, no backend, no ``introspect_opt``.

``introspect_opt.plot_learning_rate`` and ``introspect-opt plot`` both draw
with :func:`draw_learning_rate`, so a schedule looks the same whichever
evaluated it (Keras, or NumPy in ``_schedules``). The update grid and the
mapping from updates to the raw step counter Keras evaluates the schedule at
live here too, for the same reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# More points than a plot is pixels wide; beyond this the schedule is sampled.
MAX_PLOT_POINTS = 4096
DEFAULT_PLOT_END = 1000

_MATPLOTLIB_MISSING = (
    "{who} needs matplotlib, an optional dependency of introspect-opt: "
    "`pip install matplotlib` (or, from a checkout of introspect-opt, "
    '`pip install ".[plot]"`).'
)


def require_matplotlib(who: str) -> None:
    """Raises ImportError, saying how to install matplotlib, when it is missing.

    Args:
        who: What needs it, for the message (``"plot_learning_rate()"``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as error:
        raise ImportError(_MATPLOTLIB_MISSING.format(who=who)) from error


def update_grid(end: int) -> np.ndarray:
    """Updates ``0..end`` to plot: all of them, or 4,096 evenly spaced when longer."""
    count = min(end + 1, MAX_PLOT_POINTS)
    return np.unique(np.linspace(0, end, count).round().astype(np.int64))


def rates_at_updates(
    evaluate: Callable[[np.ndarray], np.ndarray], updates: np.ndarray, accumulation: int
) -> np.ndarray:
    """The rate ``current_learning_rate`` reads after each update (int64, any shape).

    Update ``n >= 1`` ran at raw counter ``n*k - 1`` (``k``: gradient
    accumulation steps); before any update, the first will use ``k - 1``.
    ``evaluate`` gets each raw counter once, as a sorted 1-D int64 array.
    """
    flat = updates.ravel()
    k = accumulation
    raw = np.where(flat > 0, flat * k - 1, k - 1).astype(np.int64)
    unique, inverse = np.unique(raw, return_inverse=True)
    values = evaluate(unique)
    return np.asarray(values[inverse.ravel()].reshape(updates.shape))


def draw_learning_rate(
    path: str | os.PathLike[str],
    grid: np.ndarray,
    rates: np.ndarray,
    *,
    title: str,
    applied_steps: np.ndarray | None = None,
    applied_rates: np.ndarray | None = None,
    current: tuple[int, float] | None = None,
) -> Path:
    """Writes the plot to a PNG: the rate line, applied rates and the current point on top.

    Uses matplotlib's Agg renderer without touching ``pyplot``'s global state.

    Args:
        path: Where to write the PNG.
        grid: The updates plotted (x).
        rates: The rate after each of them (y).
        title: The plot title.
        applied_steps: Updates whose applied rate is marked; none by default.
        applied_rates: Their rates.
        current: ``(iterations, current_learning_rate)`` to mark, if any.

    Returns:
        ``path``, as a ``pathlib.Path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes: Any = figure.add_subplot()
    axes.plot(grid, rates, linewidth=1.6, label="current_learning_rate after update n")
    if applied_steps is not None and applied_rates is not None and applied_steps.size:
        axes.plot(
            applied_steps, applied_rates, "o", markersize=3.5, alpha=0.8, label="applied (recorded)"
        )
    if current is not None:
        axes.plot(
            [current[0]],
            [current[1]],
            "D",
            markersize=8,
            markeredgecolor="black",
            label=f"last applied: update {current[0]}, rate {current[1]:.4g}",
        )
    axes.set_xlabel("updates applied (optimizer.iterations)")
    axes.set_ylabel("learning rate")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.savefig(path, format="png")
    return Path(path)
