"""Every promise of docs/what-is-my-optimizer-doing.md, on real models trained with ``fit``.

One test per promise; its name and docstring say which. The models are small
Keras models, read per step by a callback that uses only public API, as the
page's example does.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import runpy
import sys
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from introspect_opt import (
    IntrospectableAdam,
    IntrospectableAdamW,
    IntrospectableSGD,
    current_learning_rate,
    last_update_diagnostics,
    record_diagnostics,
)

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
EXAMPLE = ROOT / "examples" / "per_layer_diagnostics.py"
PAGE = ROOT / "docs" / "what-is-my-optimizer-doing.md"
KEYS = ("gradient_norm", "update_norm", "weight_norm", "update_to_weight_ratio")
# float32's unit roundoff: an update is measured as the difference of float32
# weights, each rounded once, so its norm is exact to about U * weight norm.
U = 2.0**-24

Rows = dict[str, dict[str, float]]


class Recorder(keras.callbacks.Callback):
    """After every batch: the per-variable rows and the applied rate (public API only)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Rows] = []
        self.rates: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.rows.append(last_update_diagnostics(self.model, per_variable=True))
        self.rates.append(float(current_learning_rate(self.model)))


def make_model(seed: int = 0, **dense: Any) -> keras.Model:
    """Two Dense layers, 6 -> 5 -> 3; variables net/a/kernel, net/a/bias, net/b/..."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="a", **dense),
            keras.layers.Dense(3, name="b"),
        ],
        name="net",
    )


def make_data(n: int = 64, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), rng.normal(size=(n, 3)).astype("float32")


def train(model: keras.Model, optimizer: Any, x: Any, y: Any, **fit: Any) -> Recorder:
    """Compiles with ``optimizer``, records per-variable diagnostics, fits, returns the rows."""
    model.compile(optimizer, loss=fit.pop("loss", "mse"))
    record_diagnostics(model, per_variable=True)
    recorder = Recorder()
    fit = {"batch_size": len(x), "epochs": 1, "verbose": 0, "shuffle": False, **fit}
    model.fit(x, y, callbacks=[recorder], **fit)
    return recorder


def assert_equals_rate(values: dict[str, float], rate: float) -> None:
    """effective_learning_rate == rate, to the float32 rounding of the weights."""
    slack = 1e-6 + 4 * U * (values["weight_norm"] + values["update_norm"]) / values["update_norm"]
    assert abs(values["effective_learning_rate"] / rate - 1) <= slack, (values, rate)


def test_sgd_without_momentum_effective_learning_rate_equals_the_applied_rate() -> None:
    """SGD without momentum: effective_learning_rate equals the applied rate, every step."""
    x, y = make_data()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.8)
    recorder = train(make_model(), IntrospectableSGD(schedule), x, y, batch_size=16, epochs=2)
    assert len(recorder.rows) == 8
    assert len(set(recorder.rates)) == 8  # a rate of its own at each step
    for rows, rate in zip(recorder.rows, recorder.rates, strict=True):
        assert set(rows) == {"net/a/kernel", "net/a/bias", "net/b/kernel", "net/b/bias"}
        for values in rows.values():
            assert_equals_rate(values, rate)


def test_with_momentum_effective_learning_rate_is_not_the_rate() -> None:
    """With momentum the update carries past gradients: effective_learning_rate differs."""
    x, y = make_data()
    recorder = train(make_model(), IntrospectableSGD(0.1, momentum=0.9), x, y, batch_size=16)
    first, last = recorder.rows[0], recorder.rows[-1]
    assert first["net/a/kernel"]["effective_learning_rate"] == pytest.approx(0.1, rel=1e-4)
    assert last["net/a/kernel"]["effective_learning_rate"] > 0.15


def test_the_global_values_combine_the_per_variable_ones() -> None:
    """The global norms are the per-variable ones combined as one vector's norm."""
    x, y = make_data()
    model = make_model()
    train(model, IntrospectableAdamW(0.01, weight_decay=0.1), x, y, batch_size=32)
    rows = last_update_diagnostics(model, per_variable=True)
    overall = last_update_diagnostics(model)

    def combined(key: str) -> float:
        return math.sqrt(sum(values[key] ** 2 for values in rows.values()))

    assert overall["gradient_norm"] == pytest.approx(combined("gradient_norm"), rel=1e-5)
    assert overall["update_norm"] == pytest.approx(combined("update_norm"), rel=1e-5)
    ratio = combined("update_norm") / combined("weight_norm")
    assert overall["update_to_weight_ratio"] == pytest.approx(ratio, rel=1e-5)


def test_adam_at_step_1_moves_every_element_by_about_the_rate() -> None:
    """Adam at step 1: each element moves by at most lr; update_norm is about lr*sqrt(size).

    So effective_learning_rate is about lr*sqrt(size)/gradient_norm: scaling the
    loss (and so every gradient) by 1000 leaves the update as it is and divides
    effective_learning_rate by 1000.
    """
    x, y = make_data()
    results = []
    for scale in (1.0, 1000.0):
        model = make_model()
        model.compile(
            IntrospectableAdam(0.01),
            loss=lambda t, p, s=scale: s * keras.ops.mean(keras.ops.square(t - p)),
        )
        record_diagnostics(model, per_variable=True)
        before = [np.array(w) for w in model.get_weights()]
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
        after = [np.array(w) for w in model.get_weights()]
        rows = last_update_diagnostics(model, per_variable=True)
        for (path, values), old, new in zip(rows.items(), before, after, strict=True):
            assert np.max(np.abs(new - old)) <= 0.01 * (1 + 1e-5), path
            expected = 0.01 * math.sqrt(old.size)
            assert values["update_norm"] == pytest.approx(expected, rel=1e-3), path
            assert values["effective_learning_rate"] == pytest.approx(
                expected / values["gradient_norm"], rel=1e-3
            )
        results.append(rows)
    plain, scaled = results
    for path in plain:
        assert scaled[path]["update_norm"] == pytest.approx(plain[path]["update_norm"], rel=1e-3)
        assert scaled[path]["gradient_norm"] == pytest.approx(
            1000 * plain[path]["gradient_norm"], rel=1e-4
        )
        assert scaled[path]["effective_learning_rate"] == pytest.approx(
            plain[path]["effective_learning_rate"] / 1000, rel=1e-3
        )


class HalfUsed(keras.layers.Layer):
    """A layer with a weight its output does not depend on."""

    def build(self, input_shape: Any) -> None:
        self.used = self.add_weight((input_shape[-1], 3), name="used")
        self.unused = self.add_weight((3,), name="unused", initializer="ones")

    def call(self, inputs: Any) -> Any:
        return inputs @ self.used


def test_a_variable_without_gradient_reads_nan() -> None:
    """A variable without gradient reads nan (TF, torch); JAX gives it a zero gradient.

    On JAX autodiff returns zeros for it, so Keras updates it with a zero
    gradient: gradient_norm 0, effective_learning_rate nan, update_norm 0 for
    plain SGD.
    """
    x, y = make_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), HalfUsed(name="half")], name="net")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, IntrospectableSGD(0.1), x, y)
    warned = any("Gradients do not exist for variables" in str(w.message) for w in caught)
    assert warned == (BACKEND != "jax")
    rows = last_update_diagnostics(model, per_variable=True)
    assert rows["net/half/used"]["effective_learning_rate"] == pytest.approx(0.1, rel=1e-5)
    unused = rows["net/half/unused"]
    assert math.isnan(unused["effective_learning_rate"])
    if BACKEND == "jax":
        assert unused["gradient_norm"] == 0.0
        assert unused["update_norm"] == 0.0
        assert unused["weight_norm"] == pytest.approx(math.sqrt(3))
    else:
        assert all(math.isnan(unused[key]) for key in KEYS), unused


def test_a_zero_gradient_reads_nan_effective_learning_rate() -> None:
    """A zero gradient reads effective_learning_rate nan (inputs all zero: the kernel's is 0)."""
    _, y = make_data()
    x = np.zeros((64, 6), "float32")
    model = make_model()
    train(model, IntrospectableSGD(0.1), x, y)
    kernel = last_update_diagnostics(model, per_variable=True)["net/a/kernel"]
    assert kernel["gradient_norm"] == 0.0
    assert kernel["update_norm"] == 0.0
    assert kernel["update_to_weight_ratio"] == 0.0
    assert math.isnan(kernel["effective_learning_rate"])


def test_weights_all_zero_before_the_update_read_an_infinite_ratio() -> None:
    """A zero-initialised bias at step 1: weight_norm 0, update_to_weight_ratio inf."""
    x, y = make_data()
    model = make_model()
    train(model, IntrospectableSGD(0.1), x, y)
    bias = last_update_diagnostics(model, per_variable=True)["net/a/bias"]
    assert bias["weight_norm"] == 0.0
    assert bias["update_norm"] > 0.0
    assert bias["update_to_weight_ratio"] == math.inf


def test_update_norm_is_the_change_made_decoupled_weight_decay_included() -> None:
    """update_norm is the norm of the change, weight decay included; weight_norm is before it.

    The decay is large here (each step shrinks the weights by 5%, as much as
    the Adam step moves them): without it the norms would differ by far more
    than the tolerance.
    """
    x, y = make_data()
    model = make_model()
    model.compile(IntrospectableAdamW(0.01, weight_decay=5.0), loss="mse")
    record_diagnostics(model, per_variable=True)
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)  # step 1: the biases become non-zero
    before = [np.array(w, dtype="float64") for w in model.get_weights()]
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    after = [np.array(w, dtype="float64") for w in model.get_weights()]
    rows = last_update_diagnostics(model, per_variable=True)
    for (path, values), old, new in zip(rows.items(), before, after, strict=True):
        change = np.linalg.norm(new - old)
        assert values["update_norm"] == pytest.approx(change, rel=1e-5), path
        assert values["weight_norm"] == pytest.approx(np.linalg.norm(old), rel=1e-6), path
        if path.endswith("kernel"):  # the decay is a large part of the change
            assert 0.01 * 5.0 * np.linalg.norm(old) > 0.2 * values["update_norm"], path


def test_a_kernel_constraint_is_not_part_of_update_norm() -> None:
    """A kernel constraint is not part of update_norm: Keras applies it after the update.

    The next update's weight_norm is that of the constrained weights.
    """
    x, y = make_data()
    model = make_model(kernel_constraint=keras.constraints.NonNeg())
    model.compile(IntrospectableSGD(0.5), loss="mse")
    record_diagnostics(model, per_variable=True)
    before = np.array(model.get_weights()[0])
    assert before.min() < 0
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    after = np.array(model.get_weights()[0])
    kernel = last_update_diagnostics(model, per_variable=True)["net/a/kernel"]
    assert after.min() == 0.0  # the constraint clipped the negative weights
    assert kernel["update_norm"] == pytest.approx(0.5 * kernel["gradient_norm"], rel=1e-5)
    assert np.linalg.norm(after - before) > 1.05 * kernel["update_norm"]
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    kernel = last_update_diagnostics(model, per_variable=True)["net/a/kernel"]
    assert kernel["weight_norm"] == pytest.approx(np.linalg.norm(after), rel=1e-6)


def test_gradient_norm_is_read_after_clipping() -> None:
    """gradient_norm is that of the clipped gradient: clipnorm per variable, global_clipnorm."""
    x, y = make_data()
    unclipped = train(make_model(), IntrospectableSGD(0.1), x, y).rows[-1]
    clipped = train(make_model(), IntrospectableSGD(0.1, clipnorm=0.01), x, y).rows[-1]
    for path, values in clipped.items():
        assert unclipped[path]["gradient_norm"] > 0.05
        assert values["gradient_norm"] == pytest.approx(0.01, rel=1e-5), path
    rows = train(make_model(), IntrospectableSGD(0.1, global_clipnorm=0.01), x, y).rows[-1]
    together = math.sqrt(sum(values["gradient_norm"] ** 2 for values in rows.values()))
    assert together == pytest.approx(0.01, rel=1e-5)


def test_gradient_norm_is_read_after_unscaling() -> None:
    """Loss scaling (loss_scale_factor, a LossScaleOptimizer): the gradient is read unscaled."""
    x, y = make_data()
    plain = train(make_model(), IntrospectableSGD(0.1), x, y).rows[-1]
    factor = train(make_model(), IntrospectableSGD(0.1, loss_scale_factor=1024.0), x, y).rows[-1]
    wrapped = keras.optimizers.LossScaleOptimizer(IntrospectableSGD(0.1), initial_scale=2.0**15)
    dynamic = train(make_model(), wrapped, x, y).rows[-1]
    for path, values in plain.items():
        for scaled in (factor, dynamic):
            assert scaled[path]["gradient_norm"] == pytest.approx(values["gradient_norm"], rel=1e-6)


def test_accumulation_micro_steps_are_not_recorded() -> None:
    """Gradient accumulation: micro-steps record nothing; an applied update, the mean gradient."""
    x, y = make_data()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.8)
    optimizer = IntrospectableSGD(schedule, gradient_accumulation_steps=2)
    recorder = train(make_model(), optimizer, x, y, batch_size=16)
    first, second, third, fourth = recorder.rows
    assert all(math.isnan(values["gradient_norm"]) for values in first.values())  # no update yet
    assert third == second  # a micro-step: still the update of batch 2
    assert fourth != second
    for rows, rate in [(second, recorder.rates[1]), (fourth, recorder.rates[3])]:
        for values in rows.values():
            assert_equals_rate(values, rate)  # the gradient applied: the micro-steps' mean


def test_a_loss_scale_skip_is_not_recorded() -> None:
    """A step a LossScaleOptimizer skips (non-finite gradients) leaves the last update's rows."""
    x, y = make_data()
    x[16:32] = np.nan  # the second batch's gradients are nan
    optimizer = keras.optimizers.LossScaleOptimizer(IntrospectableSGD(0.1))
    recorder = train(make_model(), optimizer, x, y, batch_size=16)
    assert int(optimizer.inner_optimizer.iterations) == 3
    first, skipped, third, _ = recorder.rows
    assert skipped == first
    assert all(math.isfinite(values["gradient_norm"]) for values in skipped.values())
    assert third != first


def test_sparse_rows_that_share_an_index_are_summed() -> None:
    """An Embedding fed the same id many times: gradient_norm is that of the gradient applied."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((2,), dtype="int32"),
            keras.layers.Embedding(4, 2, name="embedding"),
            keras.layers.Flatten(),
            keras.layers.Dense(1, name="out"),
        ],
        name="net",
    )
    ids = np.ones((32, 2), "int32")  # id 1, 64 times per batch
    y = np.ones((32, 1), "float32")
    recorder = train(model, IntrospectableSGD(0.1), ids, y, batch_size=16)
    for rows in recorder.rows:
        table = rows["net/embedding/embeddings"]
        assert table["gradient_norm"] > 0
        assert_equals_rate(table, 0.1)  # unsummed rows would read 1/8 of the norm


@pytest.mark.tf_only
def test_gradients_are_summed_over_replicas() -> None:
    """Under MirroredStrategy each variable's norms are those of the gradient summed over replicas.

    Each replica computes half the batch's gradient; SGD's effective_learning_rate
    would read twice the rate if a replica's own gradient were taken.
    """
    import tensorflow as tf

    x, y = make_data(32)
    results = []
    for devices in (["/cpu:0"], ["/cpu:0", "/cpu:1"]):
        with tf.distribute.MirroredStrategy(devices).scope():
            model = make_model()
            recorder = train(model, IntrospectableSGD(0.1), x, y, batch_size=16)
        for rows in recorder.rows:
            for values in rows.values():
                assert_equals_rate(values, 0.1)
        results.append(recorder.rows[-1])
    one, two = results
    for path, values in two.items():
        for key in KEYS:
            assert values[key] == pytest.approx(one[path][key], rel=1e-5), (path, key)


def test_the_state_kept_is_three_float32_per_variable(tmp_path: Path) -> None:
    """Between updates, per-variable diagnostics keep three float32 per trainable variable.

    Read from what ``save_weights`` writes: the optimizer's whole state.
    """
    import h5py

    x, y = make_data()

    def saved_state(per_variable: bool) -> dict[str, tuple[tuple[int, ...], str]]:
        model = make_model()
        model.compile(IntrospectableSGD(0.1), loss="mse")
        record_diagnostics(model, per_variable=per_variable)
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
        path = tmp_path / f"{per_variable}.weights.h5"
        model.save_weights(path)
        found: dict[str, tuple[tuple[int, ...], str]] = {}

        def note(name: str, item: Any) -> None:
            if isinstance(item, h5py.Dataset) and not name.endswith("manifest"):
                found[name] = (item.shape, str(item.dtype))

        with h5py.File(path) as file:
            file["optimizer"].visititems(note)
        return found

    without, with_rows = saved_state(False), saved_state(True)
    added = {name: with_rows[name] for name in set(with_rows) - set(without)}
    assert list(added.values()) == [((4, 3), "float32")]  # 4 trainable variables
    assert {name: with_rows[name] for name in without} == without


@pytest.mark.skipif(BACKEND != "jax", reason="reads the JAX backend's compiled memory plan")
def test_the_compiled_step_holds_no_copy_of_the_model() -> None:
    """JAX/XLA: the extra temporary memory of fit's step does not grow with the variable count.

    It stays within the largest variable (SGD and AdamW) or two of them
    (Adam), measured, the same for 24 kernels as for 8, where a copy of the
    model would grow with every layer.
    """
    import jax

    width = 500  # 1 MB per kernel

    def extra_temporary_bytes(optimizer_class: Any, layers: int) -> int:
        sizes = []
        for per_variable in (False, True):
            keras.utils.set_random_seed(0)
            model = keras.Sequential(
                [keras.Input((width,))]
                + [keras.layers.Dense(width, use_bias=False) for _ in range(layers)]
            )
            model.compile(optimizer_class(0.01), loss="mse")
            if per_variable:
                record_diagnostics(model, per_variable=True)
            data = (np.ones((2, width), "float32"), np.zeros((2, width), "float32"))
            model.fit(*data, verbose=0)  # builds the optimizer
            state = tuple(
                [v.value for v in variables]
                for variables in (
                    model.trainable_variables,
                    model.non_trainable_variables,
                    model.optimizer.variables,
                    model.metrics_variables,
                )
            )
            step = jax.jit(model.train_step, donate_argnums=0).lower(state, data).compile()
            sizes.append(step.memory_analysis().temp_size_in_bytes)
        return sizes[1] - sizes[0]

    largest = width * width * 4
    for optimizer_class, copies in [
        (IntrospectableSGD, 1),
        (IntrospectableAdamW, 1),
        (IntrospectableAdam, 2),
    ]:
        few, many = (extra_temporary_bytes(optimizer_class, layers) for layers in (8, 24))
        assert few <= copies * largest + 100_000, (optimizer_class, few)
        assert many <= few + 100_000, (optimizer_class, few, many)  # 3x the layers: no more


@pytest.mark.skipif(BACKEND != "jax", reason="reads the JAX backend's compiled memory plan")
def test_a_custom_jax_loop_jitting_stateless_apply_with_donation_holds_two_model_copies() -> None:
    """The known exception (docs/logging.md, "The cost"): two models' worth of temporaries.

    ``jax.jit(optimizer.stateless_apply, donate_argnums=...)`` on CPU: XLA
    keeps every variable's update and new value in temporary memory until
    the step ends, 8 MB per 4 MB variable, where SGD without diagnostics
    needs none (the same happens to a plain JAX function that reduces each
    update and applies it). Pinned so that the docs change when XLA or the
    implementation does better.
    """
    import jax

    def temporary_mib(per_variable: bool | None, count: int) -> float:
        variables = [keras.Variable(np.full((1024, 1024), 0.5, "float32")) for _ in range(count)]
        optimizer = IntrospectableSGD(0.1)
        optimizer.build(variables)
        if per_variable is not None:
            record_diagnostics(optimizer, per_variable=per_variable)
        state = [v.value for v in optimizer.variables]
        weights = [v.value for v in variables]
        gradients = [np.full((1024, 1024), 0.1, "float32") for _ in variables]
        step = jax.jit(lambda s, g, w: optimizer.stateless_apply(s, g, w), donate_argnums=(0, 2))
        plan = step.lower(state, gradients, weights).compile().memory_analysis()
        return float(plan.temp_size_in_bytes) / 2**20

    for count in (2, 4):
        assert temporary_mib(None, count) == 0.0
        assert temporary_mib(False, count) == pytest.approx(8.0 * count, abs=0.5)
        assert temporary_mib(True, count) == pytest.approx(8.0 * count, abs=0.5)


def _example_module() -> Any:
    spec = importlib.util.spec_from_file_location("per_layer_diagnostics", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_recipe_flags_values_outside_the_band_nan_and_inf_included() -> None:
    """flag_outside_band (the page's recipe, the example's code) flags outside, nan and inf."""
    flag = _example_module().flag_outside_band
    rows = {
        "in": {"update_to_weight_ratio": 1e-3},
        "edge": {"update_to_weight_ratio": 1e-4},
        "low": {"update_to_weight_ratio": 1e-6},
        "high": {"update_to_weight_ratio": 0.5},
        "untouched": {"update_to_weight_ratio": math.nan},
        "zero weights": {"update_to_weight_ratio": math.inf},
    }
    flagged = flag(rows, 1e-4, 1e-2)
    assert list(flagged) == ["low", "high", "untouched", "zero weights"]
    assert flagged["high"] == 0.5


def test_the_page_shows_the_examples_recipe() -> None:
    """The recipe on the page is the example's function, word for word."""
    source = inspect.getsource(_example_module().flag_outside_band)
    assert source in PAGE.read_text()


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "tensorflow", reason="tests/test_examples.py runs it on TensorFlow")
def test_the_example_runs_on_this_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example trains, reads every step in a callback, and writes its PNG on JAX and torch."""
    out = tmp_path / "ratio.png"
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--out", str(out), "--epochs", "1"])
    keras.backend.clear_session()
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
