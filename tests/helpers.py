"""Small real models and data shared by the tests."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

from introspect_opt import IntrospectableSGD

# jit_compile settings to test. On the torch backend jit_compile=True means
# torch.compile, which takes minutes per model on a 2-core CI machine; the XLA
# paths are covered on TensorFlow and JAX.
JIT_MODES = [
    False,
    pytest.param(
        True,
        marks=pytest.mark.skipif(
            keras.backend.backend() == "torch",
            reason="jit_compile=True is torch.compile on this backend (minutes per model)",
        ),
    ),
]

SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.9)

# Every optimizer class the installed Keras exports, but the wrappers, which
# apply no updates themselves (the list the package must match).
WRAPPERS = {"Optimizer", "LossScaleOptimizer", "MultiOptimizer"}
KERAS_OPTIMIZERS = sorted(
    name
    for name, obj in vars(keras.optimizers).items()
    if isinstance(obj, type)
    and issubclass(obj, keras.optimizers.Optimizer)
    and name not in WRAPPERS
)


def make_model(seed: int = 0, inputs: int = 8, hidden: int = 16, outputs: int = 1) -> Any:
    """A deterministic two-layer MLP."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(outputs),
        ]
    )


def make_data(n: int = 64, inputs: int = 8, outputs: int = 1, seed: int = 1) -> tuple[Any, Any]:
    """Regression data from a fixed generator."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, inputs)).astype("float32")
    y = (x @ rng.normal(size=(inputs, outputs))).astype("float32")
    return x, y


def sync(model: Any) -> Any:
    """Puts a model's state back on its variables (JAX keeps it off them in fit)."""
    if hasattr(model, "jax_state_sync"):
        model.jax_state_sync()
    return model.optimizer


def weights_of(model: Any) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_weights()]


def optimizer_state(optimizer: Any) -> list[np.ndarray]:
    """The variables a plain Keras optimizer of the same class has, as arrays.

    On JAX an introspectable optimizer also lists its cache in ``variables``;
    comparisons with plain optimizers and files are about the plain ones.
    """
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:  # a LossScaleOptimizer: its own two, then the inner ones
        own = [keras.ops.convert_to_numpy(v) for v in optimizer._variables]
        return own + optimizer_state(inner)
    plain = getattr(optimizer, "_plain_variables", lambda: optimizer.variables)()
    return [keras.ops.convert_to_numpy(v) for v in plain]


def schedule_value(schedule: Any, step: int) -> np.float32:
    """The schedule evaluated eagerly at a raw step, as Keras would pass it."""
    return np.float32(keras.ops.convert_to_numpy(schedule(np.int64(step))))


class Witness(IntrospectableSGD):
    """Records, in a variable, the learning rate Keras passed to update_step.

    The oracle for bit-exactness: a real optimizer subclass whose update_step
    stores the value it received before applying the plain SGD update.
    """

    def build(self, variables: Any) -> None:
        super().build(variables)
        self.witness = self.add_variable((), name="witness_rate")

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        self.witness.assign(keras.ops.cast(learning_rate, "float32"))
        super().update_step(gradient, variable, learning_rate)


def bits(value: Any) -> int:
    """The float32 bit pattern of a scalar."""
    return int(np.float32(keras.ops.convert_to_numpy(value)).view(np.int32))


class WitnessRecorder(keras.callbacks.Callback):
    """After every batch: (iterations, current_learning_rate, witnessed rate)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, float, float]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        optimizer = self.model.optimizer
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        self.rows.append(
            (
                int(inner.iterations),
                float(inner.current_learning_rate),
                float(keras.ops.convert_to_numpy(inner.witness)),
            )
        )


def run_benchmark_quick(script: str) -> str:
    """Runs ``benchmarks/<script> --quick`` on TensorFlow as a user would; its stdout.

    Fails with the end of its output where the script exits with an error.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / script), "--quick"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout
