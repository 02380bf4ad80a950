"""Small real tf_keras models, data and comparisons shared by the tf_keras tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from introspect_opt import tf_keras as itk

# Not staircase: every step has a rate of its own, so a stale or shifted value
# cannot pass for the right one.
SCHEDULE = tf_keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.9)


def exported_optimizers() -> dict[str, type]:
    """Every concrete optimizer class the installed tf_keras exports, by our class name."""
    found = {}
    for module, prefix, base in (
        (tf_keras.optimizers, "Introspectable", tf_keras.optimizers.Optimizer),
        (tf_keras.optimizers.legacy, "IntrospectableLegacy", tf_keras.optimizers.legacy.Optimizer),
    ):
        for name, value in vars(module).items():
            concrete = isinstance(value, type) and issubclass(value, base) and value is not base
            if concrete and not issubclass(value, tf_keras.mixed_precision.LossScaleOptimizer):
                found[prefix + name] = value
    return found


# tf_keras's legacy Nadam refuses schedules ("The Nadam optimizer does not support
# tf.keras.optimizers.LearningRateSchedules as the learning rate."): a float there.
FLOAT_ONLY = {"IntrospectableLegacyNadam"}


def rate_for(name: str, schedule: Any = SCHEDULE) -> Any:
    """The learning rate to construct ``name`` with: ``schedule``, where the class takes one."""
    return 0.05 if name in FLOAT_ONLY else schedule


def make_model(seed: int = 0, inputs: int = 4, hidden: int = 8) -> Any:
    """A deterministic two-layer MLP."""
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential(
        [
            tf_keras.layers.Dense(hidden, activation="relu", input_shape=(inputs,)),
            tf_keras.layers.Dense(1),
        ]
    )


def make_data(n: int = 32, inputs: int = 4, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Regression data from a fixed generator."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, inputs)).astype("float32")
    y = (x @ rng.normal(size=(inputs, 1))).astype("float32")
    return x, y


def is_new(optimizer: Any) -> bool:
    return isinstance(optimizer, tf_keras.optimizers.Optimizer)


def plain_variables(optimizer: Any) -> list[Any]:
    """The variables tf_keras itself lists for the optimizer (what files hold)."""
    return list(optimizer.variables) if is_new(optimizer) else list(optimizer.weights)


def state_arrays(optimizer: Any) -> dict[str, np.ndarray]:
    """Every optimizer variable and the cache, as arrays keyed by a stable name."""
    out = {}
    for variable in plain_variables(optimizer):
        name = variable.name.split("/", 1)[-1] if "/" in variable.name else variable.name
        out[name.replace("iteration:0", "iter:0")] = tf.identity(variable).numpy()
    state = getattr(optimizer, "_introspection_state", None)
    if state is not None:
        out.update({f"cache/{k}": v for k, v in state.values().items()})
    return out


def bits(value: Any) -> int:
    """The bit pattern of a float32 scalar (so equality means bit for bit)."""
    return int(np.asarray(value, dtype=np.float32).reshape(()).view(np.int32))


def array_bits(values: list[Any]) -> list[list[int]]:
    return [np.asarray(v, dtype=np.float32).ravel().view(np.int32).tolist() for v in values]


def rate(optimizer_or_model: Any) -> float:
    return float(itk.current_learning_rate(optimizer_or_model))


def update_count(optimizer: Any) -> int:
    return int(tf.identity(optimizer._introspection_state.update_count).numpy())


class RateLog(tf_keras.callbacks.Callback):
    """Per batch: the applied rate, iterations, and tf_keras's own `learning_rate`."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        optimizer = self.model.optimizer
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        self.rows.append(
            {
                "applied": float(itk.current_learning_rate(self.model)),
                "iterations": int(inner.iterations.numpy()),
            }
        )

    @property
    def applied(self) -> list[float]:
        return [row["applied"] for row in self.rows]


def mirrored_strategy(devices: list[str]) -> Any:
    """A MirroredStrategy over ``devices`` with collective keys of its own.

    TensorFlow's collective runtime remembers group and instance keys for the
    life of the process, and every MirroredStrategy numbers them from the
    class's ``_collective_key_base``: a second strategy reuses the first one's
    keys and fails ("Shape mismatch in the collective instance 100"), with plain
    optimizers too. TensorFlow's own tests offset the base per strategy.
    """
    cls = tf.distribute.MirroredStrategy
    cls._collective_key_base += 100_000
    strategy = cls(devices)
    cls._collective_key_base += 100_000
    return strategy
