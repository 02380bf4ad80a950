"""record_diagnostics(..., per_variable=True): each variable's norms, recorded on the device.

Scenario tests: real models, real ``fit``, the introspectable optimizer
classes. The oracles are plain Keras (bit-identical weights and slots), plain
SGD without momentum (its effective learning rate is the applied rate), a
NumPy reference of Adam's first step, and the gradients of a linear model,
which NumPy computes from the weights and the batch.

The whole class-by-jit matrix is ``extended`` (`pytest -m extended`) on
TensorFlow and JAX; a plain run keeps the classes whose update needs the most
care one variable at a time (Nadam's own scalar, Muon's two paths, AdamW's
decoupled decay, also under XLA / jax.jit), and on torch every class.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
import pytest
from helpers import KERAS_OPTIMIZERS, SCHEDULE, optimizer_state, schedule_value, sync

import introspect_opt
from introspect_opt import (
    IntrospectableAdam,
    IntrospectableAdamW,
    IntrospectableSGD,
    last_update_diagnostics,
    record_diagnostics,
)

BACKEND = keras.backend.backend()
KEYS = [
    "gradient_norm",
    "update_norm",
    "weight_norm",
    "update_to_weight_ratio",
    "effective_learning_rate",
]
NO_TORCH_COMPILE = pytest.mark.skipif(
    BACKEND == "torch",
    reason="jit_compile=True is torch.compile on this backend (minutes per model)",
)
Rows = dict[str, dict[str, float]]


# --- models, data, reads ----------------------------------------------------------


class Scale(keras.layers.Layer):
    """Multiplies its input by one trainable scalar: a weight of shape ()."""

    def build(self, input_shape: Any) -> None:
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, inputs: Any) -> Any:
        return inputs * self.scale


def mixed_model(seed: int = 0) -> Any:
    """An Embedding (sparse gradients on TF), a Dense kernel and bias, a scalar weight."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((3,), dtype="int32")
    x = keras.layers.Flatten()(keras.layers.Embedding(5, 2, name="embedding")(ids))
    x = keras.layers.Dense(2, name="dense")(x)
    return keras.Model(ids, Scale(name="scale")(x))


def mixed_data(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Three ids from five per example: every batch of 8 repeats ids (their rows add up)."""
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 5, size=(n, 3)).astype("int32")
    return ids, rng.normal(size=(n, 2)).astype("float32")


def linear_model(seed: int = 0) -> Any:
    """One Dense layer: NumPy computes its gradients (see ``linear_gradients``)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])


def linear_data(n: int = 24, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, (0.3 * rng.normal(size=(n, 2))).astype("float32")


def linear_gradients(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """The gradients of Keras's ``mse`` (mean over batch and outputs) for kernel and bias."""
    kernel, bias = (w.astype("float64") for w in weights)
    residual = x.astype("float64") @ kernel + bias - y
    scale = 2.0 / residual.size
    return [scale * x.T @ residual, scale * residual.sum(axis=0)]


def norm(array: Any) -> float:
    return float(np.linalg.norm(np.asarray(array, "float64").ravel()))


def fit(model: Any, x: Any, y: Any, batch_size: int = 8, callbacks: Any = ()) -> Any:
    model.fit(
        x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False, callbacks=list(callbacks)
    )
    sync(model)
    return model


def rows(obj: Any) -> Rows:
    return dict(last_update_diagnostics(obj, per_variable=True))


class EveryBatch(keras.callbacks.Callback):
    """After every batch: the per-variable rows, the global values, the applied rate, weights.

    Reads through the model, as a user's callback would (on JAX that puts
    ``fit``'s state back on the variables first).
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Rows] = []
        self.globals: list[dict[str, float]] = []
        self.rates: list[float] = []
        self.updates: list[int] = []
        self.weights: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.rows.append(rows(self.model))
        self.globals.append(dict(last_update_diagnostics(self.model)))
        rate = introspect_opt.current_learning_rate(self.model)
        self.rates.append(float(keras.ops.convert_to_numpy(rate)))
        self.updates.append(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)))
        self.weights.append([np.array(w) for w in self.model.get_weights()])


def assert_same_rows(actual: Rows, expected: Rows) -> None:
    """The same keys and the same values, bit for bit (nan included)."""
    assert list(actual) == list(expected)
    for path in expected:
        assert list(actual[path]) == list(expected[path])
        np.testing.assert_array_equal(
            np.array(list(actual[path].values()), "float32"),
            np.array(list(expected[path].values()), "float32"),
            err_msg=path,
        )


def assert_same_bits(actual: list[Any], expected: list[Any]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


# --- bit-identical to plain Keras, every class -------------------------------------

# A plain run keeps these on TensorFlow and JAX (a fit costs a trace or a jit there); the
# rest of the matrix is `extended`. On torch, where a fit of this model takes 0.2 s, a plain
# run has every class (jit_compile=True is torch.compile there: skipped).
# With decoupled weight decay, a turn's change is the weights after minus a copy before;
# without, the value the update step assigns (introspect_opt._keras3.turns): both paths.
# (AdamW refuses weight_decay=None.)
DECAYS = {"decay": 0.01, "no decay": None}
CORE = {
    *(("Nadam", False, decay) for decay in DECAYS),
    *(("Muon", False, decay) for decay in DECAYS),
    ("AdamW", False, "decay"),
    ("AdamW", True, "decay"),
    ("Adam", False, "no decay"),
    ("Adam", True, "no decay"),
    # Their update steps assign the model variable (self.assign): the change is new - current.
    ("Ftrl", False, "no decay"),
    ("Ftrl", True, "no decay"),
    ("ScheduleFreeAdamW", False, "no decay"),
}


def _matrix() -> list[Any]:
    params = []
    for name in KERAS_OPTIMIZERS:
        for jit in (False, True):
            for decay in DECAYS:
                if name == "AdamW" and DECAYS[decay] is None:
                    continue
                core = (name, jit, decay) in CORE or (BACKEND == "torch" and not jit)
                marks = [] if core else [pytest.mark.extended]
                if jit:
                    marks.append(NO_TORCH_COMPILE)
                params.append(
                    pytest.param(name, jit, decay, marks=marks, id=f"{name}-jit={jit}-{decay}")
                )
    return params


@pytest.mark.parametrize(("name", "jit_compile", "decay"), _matrix())
def test_weights_and_slots_bit_identical_with_per_variable_on(
    name: str, jit_compile: bool, decay: str
) -> None:
    """Per-variable diagnostics change no bit of any weight or optimizer variable.

    Every class introspect_opt exports, with and without weight decay, on a
    model with an Embedding (sparse gradients on TF), a kernel, a bias and a
    scalar weight, over three ``fit`` steps on a schedule; jit off and on
    (TF: XLA, JAX: jax.jit). Nadam's ``u_product`` advances once per update,
    not once per variable; Muon updates the kernel its own way, the rest as
    AdamW, each with its own decay.

    And at every step each variable's ``update_norm`` is the norm of the change
    the step made (weights after minus before, on the host), within float32
    rounding of the weights, and its ``weight_norm`` the norm before.
    """
    x, y = mixed_data()
    plain = mixed_model()
    plain_optimizer = getattr(keras.optimizers, name)(SCHEDULE, weight_decay=DECAYS[decay])
    plain.compile(plain_optimizer, loss="mse", jit_compile=jit_compile)
    fit(plain, x, y)
    ours = mixed_model()
    start = [np.array(w) for w in ours.get_weights()]
    optimizer = getattr(introspect_opt, f"Introspectable{name}")(
        SCHEDULE, weight_decay=DECAYS[decay]
    )
    ours.compile(
        record_diagnostics(optimizer, per_variable=True), loss="mse", jit_compile=jit_compile
    )
    seen = EveryBatch()
    fit(ours, x, y, callbacks=[seen])
    assert_same_bits(ours.get_weights(), plain.get_weights())
    assert_same_bits(optimizer_state(ours.optimizer), optimizer_state(plain.optimizer))
    befores = [start, *seen.weights[:-1]]
    for step, (values, before, after) in enumerate(
        zip(seen.rows, befores, seen.weights, strict=True)
    ):
        assert list(values) == [v.path for v in ours.trainable_variables]
        for (path, row), old, new in zip(values.items(), before, after, strict=True):
            where = f"{path} step {step}"
            assert list(row) == KEYS
            finite = [k for k in KEYS if k != "update_to_weight_ratio" or norm(old) > 0]
            assert all(np.isfinite(row[k]) for k in finite), (where, row)  # a zero bias: inf
            rounding = norm(np.spacing(np.maximum(np.abs(old), np.abs(new))))
            np.testing.assert_allclose(
                row["update_norm"], norm(new - old), rtol=1e-5, atol=rounding, err_msg=where
            )
            np.testing.assert_allclose(row["weight_norm"], norm(old), rtol=1e-5, err_msg=where)


# --- oracles -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "jit_compile", [False, pytest.param(True, marks=[NO_TORCH_COMPILE, pytest.mark.extended])]
)
def test_plain_sgd_effective_learning_rate_is_the_applied_rate(jit_compile: bool) -> None:
    """SGD without momentum: every variable's effective_learning_rate is the rate applied.

    On a schedule, after each of three steps, to float32 rounding, for the
    embedding (sparse gradient with repeated ids: the rows that share an id
    summed), the kernel, the bias and the scalar. "float32 rounding": the
    update is the change the step made, ``w - lr * g`` rounded to ``w``'s
    float32 grid, so ``update_norm`` is ``lr * gradient_norm`` within the norm
    of one float32 spacing per element (the scalar, at 1.0, moves by 1e-4 of
    a step). The global values are the norms over the per-variable ones
    (square root of the sum of squares).
    """
    model = mixed_model()
    start = [np.array(w) for w in model.get_weights()]
    model.compile(
        record_diagnostics(IntrospectableSGD(SCHEDULE), per_variable=True),
        loss="mse",
        jit_compile=jit_compile,
    )
    seen = EveryBatch()
    fit(model, *mixed_data(), callbacks=[seen])
    assert seen.updates == [1, 2, 3]
    befores = [start, *seen.weights[:-1]]
    for step, (values, totals, rate) in enumerate(
        zip(seen.rows, seen.globals, seen.rates, strict=True)
    ):
        np.testing.assert_allclose(rate, schedule_value(SCHEDULE, step), rtol=1e-6)
        assert list(values) == ["embedding/embeddings", "dense/kernel", "dense/bias", "scale/scale"]
        grid = zip(values.items(), befores[step], seen.weights[step], strict=True)
        for (path, row), before, after in grid:
            where = f"{path} step {step}"
            rounding = norm(np.spacing(np.maximum(np.abs(before), np.abs(after))))
            np.testing.assert_allclose(
                row["update_norm"],
                rate * row["gradient_norm"],
                rtol=2e-6,
                atol=rounding,
                err_msg=where,
            )
            np.testing.assert_allclose(
                row["effective_learning_rate"],
                row["update_norm"] / row["gradient_norm"],
                rtol=1e-6,
                err_msg=where,
            )
            assert rounding < 1e-3 * row["update_norm"], where  # the oracle keeps its teeth
            with np.errstate(divide="ignore"):  # a zero bias before the first step: inf
                ratio = np.float64(row["update_norm"]) / np.float64(row["weight_norm"])
            np.testing.assert_allclose(row["update_to_weight_ratio"], ratio, rtol=1e-6)
        column = {key: np.array([row[key] for row in values.values()]) for key in KEYS}
        np.testing.assert_allclose(
            totals["gradient_norm"], norm(column["gradient_norm"]), rtol=1e-6
        )
        np.testing.assert_allclose(totals["update_norm"], norm(column["update_norm"]), rtol=1e-6)
        np.testing.assert_allclose(
            totals["update_to_weight_ratio"],
            norm(column["update_norm"]) / norm(column["weight_norm"]),
            rtol=1e-6,
        )


def test_adam_first_step_shows_bias_correction() -> None:
    """Adam's effective_learning_rate at step 1 is that of Keras's bias-corrected first step.

    From Keras's ``Adam.update_step`` with zero slots: m = (1-b1) g, v = (1-b2)
    g^2, alpha = lr sqrt(1-b2) / (1-b1), update = m alpha / (sqrt(v) + eps),
    i.e. lr g / (|g| + eps / sqrt(1-b2)) per element. A large epsilon makes the
    corrected ``eps / sqrt(1-b2)`` matter: without bias correction the value
    would be several times larger.
    """
    lr, beta_1, beta_2, epsilon = 0.01, 0.9, 0.999, 1e-2
    x, y = linear_data(8)
    model = linear_model()
    before = [np.array(w) for w in model.get_weights()]
    optimizer = IntrospectableAdam(lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
    model.compile(record_diagnostics(optimizer, per_variable=True), loss="mse")
    fit(model, x, y, batch_size=8)
    values = rows(model)
    f32 = np.float32
    for (path, row), weights, gradient, after in zip(
        values.items(), before, linear_gradients(before, x, y), model.get_weights(), strict=True
    ):
        g = gradient.astype("float32")
        m = (g - f32(0)) * (f32(1) - f32(beta_1))
        v = (np.square(g) - f32(0)) * (f32(1) - f32(beta_2))
        alpha = f32(lr) * np.sqrt(f32(1) - f32(beta_2)) / (f32(1) - f32(beta_1))
        update = m * alpha / (np.sqrt(v) + f32(epsilon))
        expected = norm(update) / norm(g)
        effective = row["effective_learning_rate"]
        np.testing.assert_allclose(effective, expected, rtol=1e-5, err_msg=path)
        np.testing.assert_allclose(row["update_norm"], norm(after - weights), rtol=1e-5)
        np.testing.assert_allclose(row["gradient_norm"], norm(g), rtol=1e-5)
        uncorrected = norm(f32(lr) * m / (np.sqrt(v) + f32(epsilon))) / norm(g)
        assert uncorrected > 2 * row["effective_learning_rate"], path


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: IntrospectableAdamW(0.05, weight_decay=0.5), id="AdamW"),
        pytest.param(lambda: IntrospectableSGD(0.05, weight_decay=0.5), id="SGD"),
    ],
)
def test_update_norm_includes_decoupled_weight_decay(make: Any) -> None:
    """update_norm is the norm of (weights after - weights before), decay included.

    weight_norm is the norm before the step, before the decay. Each of three
    ``fit`` steps, with weights copied around each; the decay moves the
    embedding rows no id looked up too.
    """
    model = mixed_model()
    model.compile(record_diagnostics(make(), per_variable=True), loss="mse")
    x, y = mixed_data()
    for start in range(0, len(x), 8):
        before = [np.array(w) for w in model.get_weights()]
        fit(model, x[start : start + 8], y[start : start + 8])
        after = model.get_weights()
        values = rows(model)
        assert len(values) == len(before)
        for (path, row), old, new in zip(values.items(), before, after, strict=True):
            np.testing.assert_allclose(row["update_norm"], norm(new - old), rtol=1e-5, err_msg=path)
            np.testing.assert_allclose(row["weight_norm"], norm(old), rtol=1e-6, err_msg=path)
    sgd_like = isinstance(model.optimizer, IntrospectableSGD)
    if sgd_like:  # without the decay, the effective rate would be the rate, 0.05
        kernel = values["dense/kernel"]
        assert abs(kernel["effective_learning_rate"] - 0.05) > 1e-3


# --- variables without an update ------------------------------------------------------


class WithAuxiliaryHead(keras.layers.Layer):
    """Two heads; this training phase uses ``main`` only (``auxiliary`` gets no gradient)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.main = keras.layers.Dense(2, name="main")
        self.auxiliary = keras.layers.Dense(2, name="auxiliary")

    def build(self, input_shape: Any) -> None:
        self.main.build(input_shape)
        self.auxiliary.build(input_shape)

    def call(self, inputs: Any) -> Any:
        return self.main(inputs)


def test_a_variable_without_gradient_reads_nan() -> None:
    """A layer the loss does not use: its rows read nan in every key; the others are finite.

    (On JAX there is no missing gradient: ``jax.grad`` gives zeros, the
    optimizer updates the layer by zero, and its rows read a zero gradient
    and update, effective_learning_rate nan.)
    """
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), WithAuxiliaryHead(name="heads")])
    model.compile(record_diagnostics(IntrospectableSGD(0.1), per_variable=True), loss="mse")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Gradients do not exist")
        fit(model, *linear_data(16))  # two steps: the last starts from non-zero biases
    values = rows(model)
    assert list(values) == [v.path for v in model.trainable_variables]
    for path, row in values.items():
        if "auxiliary" not in path:
            assert all(np.isfinite(v) for v in row.values()), (path, row)
        elif BACKEND == "jax":
            assert row["gradient_norm"] == 0.0 and row["update_norm"] == 0.0, (path, row)
            assert np.isnan(row["effective_learning_rate"]), (path, row)
        else:
            assert all(np.isnan(v) for v in row.values()), (path, row)
    assert sum("auxiliary" in path for path in values) == 2


def test_a_zero_gradient_reads_effective_learning_rate_nan() -> None:
    """A head with loss weight 0 gets a zero gradient: effective_learning_rate nan.

    Its gradient and update norms read 0, its weight norm that of its weights;
    the other head's rows are plain SGD's (effective rate = the rate).
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    outputs = [keras.layers.Dense(1, name=name)(inputs) for name in ("kept", "muted")]
    model = keras.Model(inputs, outputs)
    model.compile(
        record_diagnostics(IntrospectableSGD(0.1), per_variable=True),
        loss=["mse", "mse"],
        loss_weights=[1.0, 0.0],
    )
    x, y = linear_data(8)
    fit(model, x, [y[:, :1], y[:, 1:]])
    values = rows(model)
    muted = model.get_layer("muted")
    for variable in muted.trainable_variables:
        row = values[variable.path]
        assert row["gradient_norm"] == 0.0 and row["update_norm"] == 0.0, row
        np.testing.assert_allclose(row["weight_norm"], norm(variable), rtol=1e-6)
        assert np.isnan(row["effective_learning_rate"]), row
    assert values["muted/kernel"]["update_to_weight_ratio"] == 0.0
    for path in ("kept/kernel", "kept/bias"):
        np.testing.assert_allclose(values[path]["effective_learning_rate"], 0.1, rtol=1e-5)


# --- keys -------------------------------------------------------------------------------


def tower(name: str) -> Any:
    """A functional sub-model whose layer is named ``dense``, as a factory function makes them."""
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs), name=name)


def test_keys_are_variable_paths_in_build_order_numbered_when_shared() -> None:
    """Keys: each variable's path, in the order the optimizer was built for them.

    Two sub-models each with a layer named ``dense`` share the paths
    ``dense/kernel`` and ``dense/bias``: the second of each reads ``#2``. Each
    row belongs to its own variable (weight_norm of that variable).
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    left, right = tower("left"), tower("right")
    model = keras.Model(inputs, keras.layers.Add()([left(inputs), 3.0 * right(inputs)]))
    model.compile(record_diagnostics(IntrospectableSGD(0.1), per_variable=True), loss="mse")
    before = [np.array(w) for w in model.get_weights()]
    fit(model, *linear_data(8))
    values = rows(model)
    assert [v.path for v in model.trainable_variables] == ["dense/kernel", "dense/bias"] * 2
    assert list(values) == ["dense/kernel", "dense/bias", "dense/kernel#2", "dense/bias#2"]
    for (path, row), weights in zip(values.items(), before, strict=True):
        np.testing.assert_allclose(row["weight_norm"], norm(weights), rtol=1e-6, err_msg=path)
    # The right tower's output counts three times: so do its gradients.
    key = dict(zip((id(v) for v in model.trainable_variables), values, strict=True))
    for mine, theirs in zip(right.trainable_variables, left.trainable_variables, strict=True):
        np.testing.assert_allclose(
            values[key[id(mine)]]["gradient_norm"],
            3 * values[key[id(theirs)]]["gradient_norm"],
            rtol=1e-5,
        )


# --- when updates apply: accumulation, loss scaling ---------------------------------


def test_gradient_accumulation_records_applied_updates_only() -> None:
    """gradient_accumulation_steps=3: micro-steps leave the values as they were.

    The applied update's gradient_norm is the norm of the gradient averaged
    over its three micro-batches (NumPy, from the weights they all saw), and
    plain SGD's update_norm is the rate times it.
    """
    x, y = linear_data(48)
    model = linear_model()
    start = [np.array(w) for w in model.get_weights()]
    optimizer = IntrospectableSGD(0.1, gradient_accumulation_steps=3)
    model.compile(record_diagnostics(optimizer, per_variable=True), loss="mse")
    seen = EveryBatch()
    fit(model, x, y, batch_size=8, callbacks=[seen])
    assert seen.updates == [0, 0, 1, 1, 1, 2]
    assert all(np.isnan(v) for row in seen.rows[0].values() for v in row.values())
    assert_same_rows(seen.rows[1], seen.rows[0])
    for update, last in ((1, 2), (2, 5)):
        weights = start if update == 1 else seen.weights[2]
        micro = [
            linear_gradients(weights, x[8 * i : 8 * i + 8], y[8 * i : 8 * i + 8])
            for i in range(last - 2, last + 1)
        ]
        averaged = [sum(g[i] for g in micro) / 3 for i in range(2)]
        values = seen.rows[last]
        for (path, row), gradient in zip(values.items(), averaged, strict=True):
            np.testing.assert_allclose(
                row["gradient_norm"], norm(gradient), rtol=1e-5, err_msg=path
            )
            np.testing.assert_allclose(row["effective_learning_rate"], 0.1, rtol=1e-5, err_msg=path)
    assert_same_rows(seen.rows[3], seen.rows[2])
    assert_same_rows(seen.rows[4], seen.rows[2])


def _loss_scaled(mode: str) -> Any:
    inner = record_diagnostics(IntrospectableSGD(0.1), per_variable=True)
    if mode == "explicit":
        return keras.optimizers.LossScaleOptimizer(inner)
    keras.config.set_dtype_policy("mixed_float16")  # compile wraps it
    return inner


@pytest.mark.parametrize("mode", ["explicit", "mixed_float16"])
def test_a_skipped_loss_scale_step_records_nothing(mode: str) -> None:
    """LossScaleOptimizer: a step with non-finite gradients leaves the rows unchanged.

    The others record the unscaled gradient's norms (NumPy's, from the
    weights and the batch; float16 arithmetic under mixed_float16).
    """
    x, y = linear_data(24)
    x[9, 0] = 1e30  # the second batch overflows: inf loss, non-finite gradients
    optimizer = _loss_scaled(mode)  # before the model: the policy decides its layers' dtypes
    model = linear_model()
    model.compile(optimizer, loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    start = [np.array(w) for w in model.get_weights()]
    seen = EveryBatch()
    fit(model, x, y, callbacks=[seen])
    assert seen.updates == [1, 1, 2]
    assert_same_rows(seen.rows[1], seen.rows[0])
    rtol = 1e-5 if mode == "explicit" else 2e-2
    for batch, weights in ((0, start), (2, seen.weights[0])):
        batch_slice = slice(8 * batch, 8 * batch + 8)
        gradients = linear_gradients(weights, x[batch_slice], y[batch_slice])
        for (path, row), gradient in zip(seen.rows[batch].items(), gradients, strict=True):
            np.testing.assert_allclose(
                row["gradient_norm"], norm(gradient), rtol=rtol, err_msg=path
            )
            np.testing.assert_allclose(row["effective_learning_rate"], 0.1, rtol=rtol, err_msg=path)


# --- MirroredStrategy -------------------------------------------------------------------


def _mirrored(replicas: int) -> Any:
    """MirroredStrategy over logical CPUs, with collective keys of its own (test_distributed)."""
    import tensorflow as tf

    cls = tf.distribute.MirroredStrategy
    cls._collective_key_base += 100_000
    strategy = cls([f"/cpu:{i}" for i in range(replicas)])
    cls._collective_key_base += 100_000
    return strategy


@pytest.mark.tf_only
def test_mirrored_gradient_norms_are_those_of_the_global_batch() -> None:
    """MirroredStrategy over 2 CPUs: each variable's gradient_norm is the single-device one.

    Gradients summed over replicas, on the same global batch (sparse
    embedding gradients included); weights and slots bit-identical to plain
    AdamW under the same strategy.
    """
    import tensorflow as tf

    x, y = mixed_data()
    results = {}
    for label, strategy, cls in (
        ("one device", tf.distribute.get_strategy(), IntrospectableAdamW),
        ("mirrored", _mirrored(2), IntrospectableAdamW),
        ("plain mirrored", _mirrored(2), keras.optimizers.AdamW),
    ):
        keras.backend.clear_session(free_memory=False)
        with strategy.scope():
            model = mixed_model()
            optimizer = cls(0.01, weight_decay=0.1)
            if cls is IntrospectableAdamW:
                record_diagnostics(optimizer, per_variable=True)
            model.compile(optimizer, loss="mse")
        seen = EveryBatch() if cls is IntrospectableAdamW else keras.callbacks.Callback()
        fit(model, x, y, callbacks=[seen])
        results[label] = (model, seen)
    one, (mirrored, two) = results["one device"][1], results["mirrored"]
    plain = results["plain mirrored"][0]
    assert_same_bits(mirrored.get_weights(), plain.get_weights())
    assert_same_bits(optimizer_state(mirrored.optimizer), optimizer_state(plain.optimizer))
    assert len(one.rows) == len(two.rows) == 3
    for step, (a, b) in enumerate(zip(one.rows, two.rows, strict=True)):
        assert list(a) == list(b)
        for path in a:
            np.testing.assert_allclose(
                b[path]["gradient_norm"],
                a[path]["gradient_norm"],
                rtol=1e-5,
                err_msg=f"{path} step {step}",
            )
            assert np.isfinite(b[path]["effective_learning_rate"])


# --- MultiOptimizer ------------------------------------------------------------------------


def _two_layers() -> Any:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="first")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="second")(hidden))


def test_multi_optimizer_sub_optimizers_record_their_own_variables() -> None:
    """MultiOptimizer: each introspectable sub-optimizer has rows for its own variables.

    Adam trains ``first``, plain SGD the rest (its effective rate is its
    rate); weights bit-identical to plain sub-optimizers. Read through the
    model or the MultiOptimizer, each sub-optimizer's values come by label.
    """
    multi_optimizer, optimizer_map = keras.optimizers.MultiOptimizer, keras.optimizers.OptimizerMap
    x, y = linear_data(24)
    plain = _two_layers()
    plain.compile(
        multi_optimizer(
            optimizer_map(keras.optimizers.SGD(0.1), {"first/.*": keras.optimizers.Adam(0.01)})
        ),
        loss="mse",
    )
    fit(plain, x, y)
    adam = record_diagnostics(IntrospectableAdam(0.01), per_variable=True)
    sgd = record_diagnostics(IntrospectableSGD(0.1), per_variable=True)
    model = _two_layers()
    model.compile(multi_optimizer(optimizer_map(sgd, {"first/.*": adam})), loss="mse")
    fit(model, x, y)
    assert_same_bits(model.get_weights(), plain.get_weights())
    assert list(rows(adam)) == ["first/kernel", "first/bias"]
    assert list(rows(sgd)) == ["second/kernel", "second/bias"]
    for row in rows(adam).values():
        assert all(np.isfinite(v) for v in row.values())
    for row in rows(sgd).values():
        np.testing.assert_allclose(row["effective_learning_rate"], 0.1, rtol=1e-5)
    # Through the model or the MultiOptimizer: each sub-optimizer's, by label.
    for holder in (model, model.optimizer):
        by_label = last_update_diagnostics(holder, per_variable=True)
        assert sorted(by_label) == ["adam", "sgd"], list(by_label)
        assert_same_rows(by_label["adam"], rows(adam))
        assert_same_rows(by_label["sgd"], rows(sgd))
        totals = last_update_diagnostics(holder)
        assert totals == {
            "sgd": last_update_diagnostics(sgd),
            "adam": last_update_diagnostics(adam),
        }


def test_record_diagnostics_of_a_multi_optimizer_switches_every_sub_optimizer_on() -> None:
    """``record_diagnostics(multi_optimizer)`` records for each sub-optimizer; returns it.

    Given the compiled model, after a first ``fit`` without diagnostics, the
    next ``fit`` records (its train function is traced again).
    """
    multi_optimizer, optimizer_map = keras.optimizers.MultiOptimizer, keras.optimizers.OptimizerMap
    x, y = linear_data(24)
    adam, sgd = IntrospectableAdam(0.01), IntrospectableSGD(0.1)
    multi = multi_optimizer(optimizer_map(sgd, {"first/.*": adam}))
    model = _two_layers()
    model.compile(multi, loss="mse")
    fit(model, x, y)
    assert last_update_diagnostics(model) == {"sgd": {}, "adam": {}}
    assert record_diagnostics(model, per_variable=True) is multi
    fit(model, x, y)
    by_label = last_update_diagnostics(model, per_variable=True)
    assert list(by_label["adam"]) == ["first/kernel", "first/bias"]
    assert list(by_label["sgd"]) == ["second/kernel", "second/bias"]
    for row in by_label["sgd"].values():
        np.testing.assert_allclose(row["effective_learning_rate"], 0.1, rtol=1e-5)
    assert record_diagnostics(multi) is multi


# --- switching it on ---------------------------------------------------------------------


def test_per_variable_must_be_a_bool() -> None:
    """record_diagnostics and last_update_diagnostics refuse a non-bool, naming `per_variable`."""
    optimizer = IntrospectableSGD(0.1)
    with pytest.raises(TypeError, match="`per_variable` must be True or False, got 'yes'"):
        record_diagnostics(optimizer, per_variable="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`per_variable` must be True or False, got 1"):
        last_update_diagnostics(optimizer, per_variable=1)  # type: ignore[call-overload]
    assert last_update_diagnostics(optimizer) == {}  # the refused call switched nothing on


def test_per_variable_read_without_per_variable_diagnostics_is_empty() -> None:
    """per_variable=True on an optimizer that does not keep them reads {}, global ones or not."""
    for optimizer in (IntrospectableSGD(0.1), record_diagnostics(IntrospectableSGD(0.1))):
        weights = keras.Variable(np.ones((2, 2), "float32"), name="w")
        optimizer.apply_gradients([(keras.ops.ones((2, 2)), weights)])
        assert last_update_diagnostics(optimizer, per_variable=True) == {}
    assert np.isfinite(last_update_diagnostics(optimizer)["update_norm"])


@pytest.mark.parametrize("before", ["nothing", "global diagnostics"])
def test_switched_on_after_fit_records_at_the_next_fit(before: str) -> None:
    """record_diagnostics(model, per_variable=True) after a fit: the next fit records rows.

    The model's train function is traced again (no warning); plain SGD's
    effective rate is its rate.
    """
    x, y = linear_data(16)
    model = linear_model()
    optimizer = IntrospectableSGD(0.1)
    if before == "global diagnostics":
        record_diagnostics(optimizer)
    model.compile(optimizer, loss="mse")
    fit(model, x, y)
    assert rows(model) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record_diagnostics(model, per_variable=True)
    assert all(np.isnan(v) for row in rows(model).values() for v in row.values())
    fit(model, x, y)
    values = rows(model)
    assert list(values) == [v.path for v in model.trainable_variables]
    for path, row in values.items():
        np.testing.assert_allclose(row["effective_learning_rate"], 0.1, rtol=1e-5, err_msg=path)
    assert np.isfinite(last_update_diagnostics(model)["gradient_norm"])


@pytest.mark.parametrize(
    ("options", "steps_per_execution"),
    [
        pytest.param({"clipnorm": 0.05}, 3, id="clipnorm-steps_per_execution=3"),
        pytest.param({"global_clipnorm": 0.05}, 1, id="global_clipnorm"),
    ],
)
def test_gradient_norms_are_those_of_the_clipped_gradients(
    options: dict[str, float], steps_per_execution: int
) -> None:
    """gradient_norm is the norm of the gradient the update applied: after clipping.

    ``clipnorm`` caps each variable's gradient norm, ``global_clipnorm`` their
    joint norm (these gradients are far larger than 0.05); plain SGD's
    effective rate stays its rate. Also with three steps per execution, where
    the callbacks see only every third step (torch allows one step only).
    """
    model = linear_model()
    model.compile(
        record_diagnostics(IntrospectableSGD(0.1, **options), per_variable=True),
        loss="mse",
        steps_per_execution=1 if BACKEND == "torch" else steps_per_execution,
    )
    x, y = linear_data(24)
    y = 10 * y
    unclipped = linear_gradients(model.get_weights(), x[:8], y[:8])
    assert min(norm(g) for g in unclipped) > 0.2
    fit(model, x, y)
    values = rows(model)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3
    if "clipnorm" in options:
        for path, row in values.items():
            np.testing.assert_allclose(row["gradient_norm"], 0.05, rtol=1e-5, err_msg=path)
    else:
        joint = norm([row["gradient_norm"] for row in values.values()])
        np.testing.assert_allclose(joint, 0.05, rtol=1e-5)
        np.testing.assert_allclose(last_update_diagnostics(model)["gradient_norm"], 0.05, rtol=1e-5)
    for path, row in values.items():
        np.testing.assert_allclose(row["effective_learning_rate"], 0.1, rtol=1e-4, err_msg=path)


def test_a_subclass_that_replaces_the_decay_keeps_it_applied_once() -> None:
    """A subclass overriding ``_apply_weight_decay``: its decay runs once, where Keras calls it.

    Per-variable diagnostics move Keras's own decay into each variable's turn;
    a replaced decay is left where Keras calls it (the update norm then
    starts after it), never applied twice.
    """

    class HalvingDecay(introspect_opt.IntrospectableAdamW):
        def _apply_weight_decay(self, variables: Any) -> None:
            for variable in variables:
                variable.assign(variable * 0.5)

    results = []
    for per_variable in (None, True):
        optimizer = HalvingDecay(learning_rate=1.0, weight_decay=0.1)
        weight = keras.Variable([2.0, 2.0], name="w")
        if per_variable:
            introspect_opt.record_diagnostics(optimizer, per_variable=True)
        optimizer.apply_gradients([(keras.ops.zeros((2,)), weight)])
        results.append(keras.ops.convert_to_numpy(weight).tolist())
    assert results == [[1.0, 1.0], [1.0, 1.0]]
    rows = introspect_opt.last_update_diagnostics(optimizer, per_variable=True)
    assert rows["w"]["update_norm"] == 0.0  # the zero gradient moved nothing after the decay


def test_excluded_from_weight_decay_bit_identical_with_diagnostics() -> None:
    """``exclude_from_weight_decay``: watched updates match plain AdamW bit for bit.

    (torch's decay refused the empty list a lone excluded variable gives it.)
    """
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = x[:, :2]
    results = []
    for optimizer_class in (keras.optimizers.AdamW, introspect_opt.IntrospectableAdamW):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
        optimizer = optimizer_class(0.1, weight_decay=0.5)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        model.compile(optimizer, loss="mse")
        if optimizer_class is introspect_opt.IntrospectableAdamW:
            introspect_opt.record_diagnostics(model, per_variable=True)
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        results.append([keras.ops.convert_to_numpy(v) for v in model.weights])
    for plain, ours in zip(*results, strict=True):
        assert plain.tobytes() == ours.tobytes()


def test_introspect_after_fit_then_record_diagnostics_of_the_model_records() -> None:
    """``introspect(opt)`` after a fit, then ``record_diagnostics(model)``: the next fit records.

    The train function was traced before the optimizer was introspectable:
    given the model, record_diagnostics traces it again.
    """
    x, y = np.ones((16, 4), "float32"), np.ones((16, 2), "float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    optimizer = keras.optimizers.SGD(0.1)
    model.compile(optimizer, loss="mse")
    model.fit(x, y, batch_size=8, verbose=0)
    introspect_opt.introspect(optimizer)
    introspect_opt.record_diagnostics(model, per_variable=True)
    model.fit(x, y, batch_size=8, verbose=0)
    rows = introspect_opt.last_update_diagnostics(model, per_variable=True)
    assert rows and all(np.isfinite(r["gradient_norm"]) for r in rows.values())
    for row in rows.values():
        np.testing.assert_allclose(row["effective_learning_rate"], 0.1, rtol=1e-4)


# --- where a turn's change comes from (introspect_opt._keras3.turns) ---------------


class DirectSGD(keras.optimizers.SGD):
    """A user's optimizer whose update step writes the variable itself (not ``self.assign``)."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr = keras.ops.cast(learning_rate, variable.dtype)
        variable.assign(variable - keras.ops.multiply(gradient, lr))


class OwnAssignSub(introspect_opt.IntrospectableSGD):
    """A user's subclass whose ``assign_sub`` writes the variable without calling ours."""

    def assign_sub(self, variable: Any, value: Any) -> None:
        variable.assign(variable - value)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: introspect_opt.introspectable(DirectSGD)(0.1), id="own update_step"),
        pytest.param(lambda: OwnAssignSub(0.1), id="own assign_sub"),
        pytest.param(lambda: IntrospectableSGD(0.1), id="Keras's own"),
    ],
)
@pytest.mark.parametrize(
    "jit_compile", [False, pytest.param(True, marks=[NO_TORCH_COMPILE, pytest.mark.extended])]
)
def test_update_norm_is_the_change_whoever_writes_the_variable(
    make: Any, jit_compile: bool
) -> None:
    """A custom update step or assignment method: update_norm is still the change made.

    Keras's own update steps assign through the optimizer's methods, where the
    turn sees the change; one that writes the variable itself is measured as
    weights after minus before. Each gives SGD's update: update_norm is
    0.1 x gradient_norm, and the weights match plain SGD.
    """
    x, y = linear_data()
    model = linear_model()
    start = [np.array(w) for w in model.get_weights()]
    model.compile(
        record_diagnostics(make(), per_variable=True), loss="mse", jit_compile=jit_compile
    )
    seen = EveryBatch()
    fit(model, x, y, callbacks=[seen])
    plain = linear_model()
    plain.compile(keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit_compile)
    fit(plain, x, y)
    np.testing.assert_allclose(
        np.concatenate([w.ravel() for w in model.get_weights()]),
        np.concatenate([w.ravel() for w in plain.get_weights()]),
        rtol=1e-6,
    )
    befores = [start, *seen.weights[:-1]]
    for values, before, after in zip(seen.rows, befores, seen.weights, strict=True):
        for (path, row), old, new in zip(values.items(), before, after, strict=True):
            np.testing.assert_allclose(row["update_norm"], norm(new - old), rtol=1e-5, err_msg=path)
            np.testing.assert_allclose(
                row["update_norm"], 0.1 * row["gradient_norm"], rtol=1e-5, err_msg=path
            )


def test_low_precision_weights_report_the_change_made_not_the_one_asked() -> None:
    """bfloat16 weights: update_norm is the change the step made, rounding included.

    SGD asks each weight of 1.0 to move by 1e-3 x its gradient; bfloat16's
    spacing at 1.0 is 2^-7, so the steps asked of most weights round away.
    The change made (weights after minus before) is what counts, and what
    update_norm reports, not the norm of what was asked (lr x gradient_norm).
    """
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, kernel_initializer="ones", name="dense", dtype="bfloat16"),
        ]
    )
    model.compile(record_diagnostics(IntrospectableSGD(1e-3), per_variable=True), loss="mse")
    x = np.linspace(-1, 1, 24).reshape(8, 3).astype("float32")
    y = np.linspace(1, 3, 32).reshape(8, 4).astype("float32")
    before = [np.array(w, "float64") for w in model.get_weights()]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    sync(model)
    after = [np.array(w, "float64") for w in model.get_weights()]
    values = rows(model)
    kernel = values[model.trainable_variables[0].path]
    made = norm(after[0] - before[0])
    asked = 1e-3 * kernel["gradient_norm"]
    assert abs(made - asked) > 0.5 * asked  # the rounding matters here
    np.testing.assert_allclose(kernel["update_norm"], made, rtol=1e-6)


class ProjectingSGD(introspect_opt.IntrospectableSGD):
    """Keras's update step (through ``self.assign_sub``), then a projection written directly."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        super().update_step(gradient, variable, learning_rate)
        variable.assign(keras.ops.clip(variable, -0.3, 0.3))


class ClippingAssignSub(introspect_opt.IntrospectableSGD):
    """An ``assign_sub`` that calls ours, then writes the variable itself."""

    def assign_sub(self, variable: Any, value: Any) -> None:
        super().assign_sub(variable, value)
        variable.assign(keras.ops.clip(variable, -0.3, 0.3))


class BufferedSGD(keras.optimizers.SGD):
    """Subtracts a buffer *variable* it then resets: the change is what it was when subtracted."""

    def build(self, variables: Any) -> None:
        super().build(variables)
        self.buffers = [self.add_variable_from_reference(v, "buffer") for v in variables]

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        buffer = self.buffers[self._get_variable_index(variable)]
        self.assign(buffer, keras.ops.multiply(gradient, learning_rate))
        self.assign_sub(variable, buffer)
        self.assign(buffer, keras.ops.zeros(buffer.shape, buffer.dtype))


@pytest.mark.parametrize(
    ("make", "projects"),
    [
        pytest.param(lambda: ProjectingSGD(0.5), True, id="projects after Keras's step"),
        pytest.param(lambda: ClippingAssignSub(0.5), True, id="clips in its assign_sub"),
        pytest.param(lambda: introspect_opt.introspectable(BufferedSGD)(0.5), False, id="buffer"),
    ],
)
def test_update_norm_counts_what_a_custom_step_writes_after_keras_s(
    make: Any, projects: bool
) -> None:
    """A custom step that also writes the variable: update_norm is the whole change made.

    Weights start in [-2, 2], so the projection to [-0.3, 0.3] moves them far
    more than SGD's step: an update norm that missed it would be 0.5 x the
    gradient norm. The buffer is reset after it was subtracted: an update
    norm read from it late would be 0. Eager and traced (tf.function /
    jax.jit through ``fit``); on torch, where our classes extend Keras's
    fused ones, the user's methods run as under plain Keras.
    """
    optimizer = record_diagnostics(make(), per_variable=True)
    weight = keras.Variable(np.linspace(-2.0, 2.0, 8).astype("float32"), name="w")
    before = np.array(keras.ops.convert_to_numpy(weight))
    optimizer.apply_gradients([(keras.ops.ones((8,)), weight)])
    after = np.array(keras.ops.convert_to_numpy(weight))
    row = rows(optimizer)["w"]
    np.testing.assert_allclose(row["update_norm"], norm(after - before), rtol=1e-6)
    if projects:
        assert row["update_norm"] > 2 * 0.5 * row["gradient_norm"]  # not only SGD's step
    else:
        np.testing.assert_allclose(row["update_norm"], 0.5 * row["gradient_norm"], rtol=1e-6)
    x, y = linear_data()
    model = linear_model()
    model.compile(record_diagnostics(make(), per_variable=True), loss="mse")
    start = [np.array(w) for w in model.get_weights()]
    seen = EveryBatch()
    fit(model, x, y, callbacks=[seen])
    for values, old_weights, new_weights in zip(
        seen.rows, [start, *seen.weights[:-1]], seen.weights, strict=True
    ):
        for (path, row), old, new in zip(values.items(), old_weights, new_weights, strict=True):
            np.testing.assert_allclose(row["update_norm"], norm(new - old), rtol=1e-5, err_msg=path)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's sparse gradients, under XLA")
@pytest.mark.parametrize("name", ["Adagrad", "Adadelta", "SGD"])
def test_sparse_updates_under_xla_report_the_change_made(name: str) -> None:
    """An Embedding under ``jit_compile=True``: Adagrad's and Adadelta's sparse steps compile.

    Their sparse change comes out of a ``tf.cond`` without a static row
    count, which XLA needs; the rows are then added into the embedding's
    shape. update_norm is the change made, repeated ids summed.
    """
    model = mixed_model()
    start = [np.array(w) for w in model.get_weights()]
    optimizer = getattr(introspect_opt, f"Introspectable{name}")(0.5)
    model.compile(record_diagnostics(optimizer, per_variable=True), loss="mse", jit_compile=True)
    seen = EveryBatch()
    fit(model, *mixed_data(), callbacks=[seen])
    for values, old_weights, new_weights in zip(
        seen.rows, [start, *seen.weights[:-1]], seen.weights, strict=True
    ):
        for (path, row), old, new in zip(values.items(), old_weights, new_weights, strict=True):
            rounding = norm(np.spacing(np.maximum(np.abs(old), np.abs(new))))
            np.testing.assert_allclose(
                row["update_norm"], norm(new - old), rtol=1e-5, atol=rounding, err_msg=path
            )


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop", "Nadam"])
def test_a_subclass_overriding_update_step_runs_it_as_under_plain_keras(name: str) -> None:
    """A user's subclass of ``Introspectable<Name>`` that overrides ``update_step``.

    Plain Keras runs a subclass's own ``update_step`` (on torch it uses its
    fused classes only for its exact classes): so must ours, on every
    backend, with diagnostics off and on (weights equal to plain Keras's),
    over three updates (Nadam's own ``u_product`` advances once per update).
    """

    def halving(base: type) -> type:
        def update_step(self: Any, gradient: Any, variable: Any, learning_rate: Any) -> None:
            base.update_step(self, gradient, variable, learning_rate)
            variable.assign(variable * 0.5)

        return type(f"Halving{name}", (base,), {"update_step": update_step})

    results = []
    for base, diagnostics in (
        (getattr(keras.optimizers, name), None),
        (getattr(introspect_opt, f"Introspectable{name}"), None),
        (getattr(introspect_opt, f"Introspectable{name}"), True),
    ):
        optimizer = halving(base)(0.1)
        if diagnostics:
            record_diagnostics(optimizer, per_variable=True)
        weight = keras.Variable(np.linspace(-2.0, 2.0, 5).astype("float32"), name="w")
        for step in range(3):
            optimizer.apply_gradients([(keras.ops.ones((5,)) * (step + 1), weight)])
        results.append(np.array(keras.ops.convert_to_numpy(weight)))
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[2], results[0])
    assert np.isfinite(results[0]).all()
    assert abs(results[0]).max() < 1.0  # halved three times: the override ran
