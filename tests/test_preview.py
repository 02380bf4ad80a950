"""preview_learning_rates() and plot_learning_rate(): the schedule preview."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import make_data, make_model, sync

import introspect_opt
from introspect_opt._features import plateau as _plateau

SCHEDULES = keras.optimizers.schedules

# Every built-in schedule, with settings whose interesting points (warmup end,
# boundaries, restarts, cycles) fall inside the steps checked below.
BUILTIN_SCHEDULES: dict[str, Any] = {
    "ExponentialDecay": SCHEDULES.ExponentialDecay(0.1, decay_steps=7, decay_rate=0.8),
    "ExponentialDecay-staircase": SCHEDULES.ExponentialDecay(0.1, 7, 0.8, staircase=True),
    "PiecewiseConstantDecay": SCHEDULES.PiecewiseConstantDecay(
        [5, 20, 30], [0.1, 0.05, 0.01, 1e-3]
    ),
    "PolynomialDecay": SCHEDULES.PolynomialDecay(0.1, 25, end_learning_rate=0.01, power=2.0),
    "PolynomialDecay-cycle": SCHEDULES.PolynomialDecay(0.1, 9, 0.01, power=0.5, cycle=True),
    "InverseTimeDecay": SCHEDULES.InverseTimeDecay(0.1, decay_steps=4, decay_rate=0.5),
    "InverseTimeDecay-staircase": SCHEDULES.InverseTimeDecay(0.1, 4, 0.5, staircase=True),
    "CosineDecay": SCHEDULES.CosineDecay(0.1, decay_steps=30, alpha=0.1),
    "CosineDecay-warmup": SCHEDULES.CosineDecay(0.0, 25, warmup_target=0.1, warmup_steps=8),
    "CosineDecayRestarts": SCHEDULES.CosineDecayRestarts(0.1, 6, t_mul=1.0, m_mul=0.9),
    "CosineDecayRestarts-geometric": SCHEDULES.CosineDecayRestarts(0.1, 5, t_mul=2.0, alpha=0.05),
}

# Computed with +, *, / and comparisons only: the same bits either way.
EXACT = {
    "ExponentialDecay-staircase",
    "PiecewiseConstantDecay",
    "InverseTimeDecay",
    "InverseTimeDecay-staircase",
}

# Updates 0..30 in shuffled order, with repeats and two far-away steps.
ITERATIONS = np.random.default_rng(0).permutation(
    np.concatenate([np.arange(31), [3, 17, 1000, 12345]])
)


def per_step(schedule: Any, raw_step: int, compiled: bool = True) -> np.float32:
    """``schedule(step)`` for one step alone, as a user would check it.

    On JAX, compiled as the train step compiles it: an eager ``lax.cond`` is
    traced anew on every call (~0.1 s each on CI's cores).
    """
    call = schedule
    if compiled and keras.backend.backend() == "jax":
        import jax

        call = _JITTED.setdefault(id(schedule), jax.jit(schedule))
    value = call(keras.ops.convert_to_tensor(np.int64(raw_step)))
    return np.float32(keras.ops.convert_to_numpy(value))


_JITTED: dict[int, Any] = {}


def peak_ulps(a: np.ndarray, b: np.ndarray) -> float:
    """The largest difference, in float32 ulps of the largest value (the schedule's scale)."""
    scale = np.spacing(np.float32(np.max(np.abs(b))))
    return float(np.max(np.abs(np.float64(a) - np.float64(b))) / scale)


def test_every_builtin_schedule_is_covered() -> None:
    """A new schedule in keras.optimizers.schedules fails here until it is tested."""
    builtin = {
        name
        for name, obj in vars(SCHEDULES).items()
        if isinstance(obj, type)
        and issubclass(obj, SCHEDULES.LearningRateSchedule)
        and obj is not SCHEDULES.LearningRateSchedule
    }
    assert builtin == {name.split("-")[0] for name in BUILTIN_SCHEDULES}


@pytest.mark.parametrize("name", list(BUILTIN_SCHEDULES))
def test_builtin_schedule_matches_per_step_calls(name: str) -> None:
    """For every built-in schedule, update n previews schedule(n-1) (n=0: schedule(0))."""
    schedule = BUILTIN_SCHEDULES[name]
    preview = introspect_opt.preview_learning_rates(schedule, ITERATIONS)
    expected = np.array([per_step(schedule, max(n - 1, 0)) for n in ITERATIONS])
    assert preview.dtype == np.float32 and preview.shape == ITERATIONS.shape
    if name in EXACT:
        np.testing.assert_array_equal(preview, expected)
    else:
        # Vectorised kernels of pow / cos round differently from scalar calls.
        # Measured (Keras 3.15.1): at most 1 ulp of the peak rate on TensorFlow
        # and torch, 6 on JAX (CosineDecayRestarts near a minimum).
        assert peak_ulps(preview, expected) <= 8


def test_preview_equals_current_learning_rate_during_fit() -> None:
    """During a real fit, current_learning_rate after each batch is what the preview said."""
    schedule = SCHEDULES.CosineDecay(0.0, 8, warmup_target=0.1, warmup_steps=3)
    model = make_model()
    model.compile(introspect_opt.IntrospectableSGD(schedule, momentum=0.9), loss="mse")
    x, y = make_data(n=40)
    seen: list[tuple[int, float]] = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(
            (
                int(sync(model).iterations),
                np.float32(keras.ops.convert_to_numpy(introspect_opt.current_learning_rate(model))),
            )
        )
    )
    before = introspect_opt.preview_learning_rates(model.optimizer, [0])
    assert before[0] == np.float32(
        keras.ops.convert_to_numpy(model.optimizer.current_learning_rate)
    )
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[record])
    counts = np.array([count for count, _ in seen])
    observed = np.array([rate for _, rate in seen], np.float32)
    np.testing.assert_array_equal(counts, np.arange(1, 11))
    preview = introspect_opt.preview_learning_rates(model, counts)
    # The train step evaluates cos inside a compiled function, the preview in
    # vectorised kernels: measured up to 1.25 ulps of the peak rate apart.
    assert peak_ulps(preview, observed) <= 8, (preview, observed)


def test_preview_with_gradient_accumulation_equals_applied_rates() -> None:
    """With gradient_accumulation_steps=3, update n applied schedule(3n - 1), as previewed."""
    schedule = SCHEDULES.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.9)
    optimizer = introspect_opt.IntrospectableSGD(schedule, gradient_accumulation_steps=3)
    weights = keras.Variable(np.ones(2, "float32"))
    assert introspect_opt.preview_learning_rates(optimizer, [0])[0] == per_step(schedule, 2)
    seen = {}
    for _ in range(9):
        optimizer.apply_gradients([(keras.ops.ones((2,)), weights)])
        seen[int(optimizer.iterations)] = np.float32(
            keras.ops.convert_to_numpy(optimizer.current_learning_rate)
        )
    assert sorted(seen) == [0, 1, 2, 3]
    updates = np.array(sorted(seen))
    preview = introspect_opt.preview_learning_rates(optimizer, updates)
    observed = np.array([seen[n] for n in updates])
    np.testing.assert_array_equal(preview, observed)
    np.testing.assert_array_equal(
        preview, [per_step(schedule, 2), *(per_step(schedule, 3 * n - 1) for n in updates[1:])]
    )


def test_preview_includes_the_plateau_multiplier() -> None:
    """A plateau multiplier of 0.5 halves every previewed rate, as the next updates apply it."""
    schedule = SCHEDULES.PiecewiseConstantDecay([3], [0.1, 0.02])
    optimizer = introspect_opt.IntrospectableSGD(schedule)
    weights = keras.Variable(np.ones(2, "float32"))
    optimizer.build([weights])
    optimizer._ensure_introspection_state().enable(optimizer, _plateau.MULTIPLIER.name)
    _plateau.set_multiplier(optimizer, 0.5)
    preview = introspect_opt.preview_learning_rates(optimizer, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(preview, np.float32([0.1, 0.1, 0.1, 0.1, 0.02]) * np.float32(0.5))
    for n in range(1, 6):
        optimizer.apply_gradients([(keras.ops.ones((2,)), weights)])
        applied = np.float32(keras.ops.convert_to_numpy(optimizer.current_learning_rate))
        assert applied == preview[n - 1], n


def test_float_rate_callable_and_wrappers() -> None:
    """A float rate, a callable rate, a LossScaleOptimizer and a bare float preview as constants."""
    np.testing.assert_array_equal(
        introspect_opt.preview_learning_rates(introspect_opt.IntrospectableAdam(0.25), [0, 7]),
        np.float32([0.25, 0.25]),
    )
    adam = introspect_opt.IntrospectableAdam(lambda: 0.125)
    np.testing.assert_array_equal(introspect_opt.preview_learning_rates(adam, [3]), [0.125])
    wrapped = keras.optimizers.LossScaleOptimizer(introspect_opt.IntrospectableSGD(0.5))
    np.testing.assert_array_equal(introspect_opt.preview_learning_rates(wrapped, [2]), [0.5])
    out = introspect_opt.preview_learning_rates(0.01, [[0, 1], [2, 3]])
    assert out.shape == (2, 2) and np.all(out == np.float32(0.01))
    assert introspect_opt.preview_learning_rates(0.01, []).shape == (0,)


class SumSchedule(SCHEDULES.LearningRateSchedule):
    """Not elementwise: on a vector it returns one number for all steps."""

    def __call__(self, step: Any) -> Any:
        return 0.1 / (1.0 + keras.ops.sum(keras.ops.cast(step, "float32")))


class NormalisedSchedule(SCHEDULES.LearningRateSchedule):
    """Not elementwise, same shape: on a vector, each value depends on the largest step."""

    def __call__(self, step: Any) -> Any:
        step = keras.ops.cast(step, "float32")
        return 0.1 * (step + 1.0) / (1.0 + keras.ops.max(step))


class PythonBranchSchedule(SCHEDULES.LearningRateSchedule):
    """Branches in Python: fails on a vector and when traced."""

    def __call__(self, step: Any) -> Any:
        if int(keras.ops.convert_to_numpy(step)) < 4:
            return keras.ops.convert_to_tensor(0.1)
        return keras.ops.convert_to_tensor(0.01)


@pytest.mark.parametrize("schedule", [SumSchedule(), NormalisedSchedule(), PythonBranchSchedule()])
def test_schedules_that_are_not_elementwise_are_evaluated_per_step(schedule: Any) -> None:
    """Wrong-shaped, wrong-valued or failing vectorised calls fall back to per-step values."""
    iterations = np.array([9, 1, 5, 0, 3])
    preview = introspect_opt.preview_learning_rates(schedule, iterations)
    expected = np.array([per_step(schedule, max(n - 1, 0), compiled=False) for n in iterations])
    np.testing.assert_array_equal(preview, expected)


def test_iterations_as_range_tensor_and_variable() -> None:
    """range, a backend tensor and optimizer.iterations itself are accepted."""
    schedule = BUILTIN_SCHEDULES["ExponentialDecay"]
    expected = introspect_opt.preview_learning_rates(schedule, np.arange(4))
    np.testing.assert_array_equal(
        introspect_opt.preview_learning_rates(schedule, range(4)), expected
    )
    tensor = keras.ops.convert_to_tensor(np.arange(4))
    np.testing.assert_array_equal(introspect_opt.preview_learning_rates(schedule, tensor), expected)
    optimizer = introspect_opt.IntrospectableSGD(schedule)
    assert introspect_opt.preview_learning_rates(optimizer, optimizer.iterations).shape == ()


@pytest.mark.parametrize(
    ("iterations", "error", "message"),
    [
        (
            [3, -1],
            ValueError,
            "preview_learning_rates() expects iterations >= 0 (0 = before the first "
            "update); received -1 at position 1.",
        ),
        (
            [1.5, 2.0],
            TypeError,
            "preview_learning_rates() expects iterations to be integers (values of "
            "optimizer.iterations, the number of updates applied); received [1.5, 2.0] "
            "(type builtins.list) with dtype float64. Pass e.g. np.arange(1000), a list "
            "of ints, or cast with .astype(int).",
        ),
        (
            True,
            TypeError,
            "preview_learning_rates() expects iterations to be integers (values of "
            "optimizer.iterations, the number of updates applied); received True "
            "(type builtins.bool) with dtype bool. Pass e.g. np.arange(1000), a list "
            "of ints, or cast with .astype(int).",
        ),
    ],
)
def test_bad_iterations_are_refused(iterations: Any, error: type, message: str) -> None:
    """Negative, fractional and boolean iterations raise errors that say what is valid."""
    with pytest.raises(error) as caught:
        introspect_opt.preview_learning_rates(0.1, iterations)
    assert str(caught.value) == message


def test_bad_sources_are_refused() -> None:
    """A string, a class, or a model without optimizer raise errors that name the fix."""
    with pytest.raises(TypeError) as caught:
        introspect_opt.preview_learning_rates("sgd", [1])
    assert str(caught.value) == (
        "preview_learning_rates() expects source to be a Keras optimizer, a compiled "
        "model, a keras.optimizers.schedules.LearningRateSchedule or a float; received "
        "'sgd' (type builtins.str)."
    )
    with pytest.raises(TypeError, match=r"received the class keras\.src\.optimizers\.sgd\.SGD\.$"):
        introspect_opt.preview_learning_rates(keras.optimizers.SGD, [1])
    model = make_model()
    with pytest.raises(ValueError) as caught:
        introspect_opt.preview_learning_rates(model, [1])
    assert str(caught.value) == (
        f"preview_learning_rates() received as source the model {model.name!r}, which has "
        "no optimizer: compile it first, or pass the optimizer or schedule."
    )


# ---------------------------------------------------------------------------------------------
# plot_learning_rate


def read_png(path: Path) -> np.ndarray:
    """The pixels of a PNG file, as matplotlib reads it (height, width, RGBA)."""
    import matplotlib.image

    return np.asarray(matplotlib.image.imread(path))


def distinct_colours(pixels: np.ndarray) -> int:
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


def test_plot_of_a_schedule_is_a_real_png(tmp_path: Path) -> None:
    """A schedule renders to an 800x450 PNG with a drawn curve, not a blank image."""
    schedule = SCHEDULES.CosineDecay(0.0, 900, warmup_target=0.1, warmup_steps=100)
    out = introspect_opt.plot_learning_rate(schedule, tmp_path / "lr.png", iterations=1000)
    assert out == tmp_path / "lr.png"
    pixels = read_png(out)
    assert pixels.shape == (450, 800, 4)
    assert distinct_colours(pixels) > 50


def test_plot_overlays_the_recorded_and_current_rates(tmp_path: Path) -> None:
    """A trained optimizer's recorded history and current point are drawn on top of the curve."""
    schedule = SCHEDULES.ExponentialDecay(0.1, decay_steps=5, decay_rate=0.5)
    optimizer = introspect_opt.keep_rate_history(introspect_opt.IntrospectableSGD(schedule), 8)
    weights = keras.Variable(np.ones(2, "float32"))
    for _ in range(10):
        optimizer.apply_gradients([(keras.ops.ones((2,)), weights)])
    with_overlay = read_png(
        introspect_opt.plot_learning_rate(optimizer, tmp_path / "a.png", iterations=40)
    )
    without = read_png(
        introspect_opt.plot_learning_rate(
            optimizer, tmp_path / "b.png", iterations=40, applied=([], [])
        )
    )
    explicit = read_png(
        introspect_opt.plot_learning_rate(
            optimizer, tmp_path / "c.png", iterations=40, applied=([1, 2, 3], [0.1, 0.1, 0.08])
        )
    )
    assert with_overlay.shape == without.shape == explicit.shape == (450, 800, 4)
    changed = np.any(with_overlay != without, axis=-1).sum()
    assert changed > 500, changed  # markers for updates 3..10 and the current point
    assert np.any(explicit != without)


def test_plot_input_errors(tmp_path: Path) -> None:
    """A bad path, range or applied pair raises an error naming the argument."""
    with pytest.raises(TypeError, match="expects path to be a file path; received 3"):
        introspect_opt.plot_learning_rate(0.1, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="iterations, the last update to plot, to be >= 1"):
        introspect_opt.plot_learning_rate(0.1, tmp_path / "x.png", iterations=0)
    with pytest.raises(TypeError, match=r"expects applied to be a pair \(iterations, rates\)"):
        introspect_opt.plot_learning_rate(0.1, tmp_path / "x.png", applied=[1, 2, 3])
    with pytest.raises(ValueError, match=r"applied\[1\] \(rates\) to be numbers, one per"):
        introspect_opt.plot_learning_rate(0.1, tmp_path / "x.png", applied=([1, 2], [0.1]))
    assert not (tmp_path / "x.png").exists()


def test_plot_without_matplotlib_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib, the ImportError names the extra to install."""
    # None in sys.modules makes the import fail, as if matplotlib were not installed.
    for module in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError) as caught:
        introspect_opt.plot_learning_rate(0.1, tmp_path / "x.png")
    assert 'pip install ".[plot]"' in str(caught.value)
    assert "pip install matplotlib" in str(caught.value)
