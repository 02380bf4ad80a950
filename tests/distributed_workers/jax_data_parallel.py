"""``model.fit`` under ``keras.distribution.DataParallel`` on 4 host CPU devices (JAX).

Run by ``tests/test_distributed.py`` in a subprocess, because the device count
must be fixed (``XLA_FLAGS``) before JAX is imported and the backend
(``KERAS_BACKEND=jax``) before Keras is: neither can change inside the test
process. Also runnable by hand: ``python tests/distributed_workers/jax_data_parallel.py``.

Trains the same model three times under the same distribution, with plain
``SGD``, ``IntrospectableSGD`` and a witness subclass that stores the rate Keras
passed to ``update_step``, and prints one line, ``RESULT <json>``, with the
device count, how the variables were placed, the rate each batch end saw
through ``introspect_opt.current_learning_rate(model)``, and the weights of
every run.
"""

from __future__ import annotations

import os

# Both must be set before JAX and Keras are imported; the parent's values (its
# own backend, possibly TensorFlow) must not leak in.
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=4"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
from typing import Any

import jax
import keras
import numpy as np

import introspect_opt

DEVICES = 4
SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.9)
GLOBAL_BATCH = 16  # 4 examples per device
SAMPLES = 64  # 4 steps per epoch
EPOCHS = 2


def _bits(value: Any) -> int:
    return int(np.asarray(value, dtype=np.float32).reshape(()).view(np.int32))


class WitnessSGD(introspect_opt.IntrospectableSGD):
    """Stores, in an optimizer variable, the rate Keras passed to update_step."""

    def build(self, variables: Any) -> None:
        super().build(variables)
        # Listed in optimizer.variables, so JAX's stateless fit carries it.
        self.witness = self.add_variable((), name="witness_rate")

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        self.witness.assign(keras.ops.cast(learning_rate, "float32"))
        super().update_step(gradient, variable, learning_rate)


class RateRecorder(keras.callbacks.Callback):
    """After every batch: iterations, the applied rate, and the witness's rate."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        # Syncs fit's state back onto the variables first (see its docstring).
        rate = introspect_opt.current_learning_rate(self.model)
        optimizer = self.model.optimizer
        row = {"iterations": int(optimizer.iterations.numpy()), "rate_bits": _bits(rate)}
        if isinstance(optimizer, WitnessSGD):
            row["witness_bits"] = _bits(optimizer.witness.numpy())
        self.rows.append(row)


def _train(optimizer_class: type) -> dict[str, Any]:
    keras.backend.clear_session()
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=keras.distribution.list_devices("cpu"))
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer_class(SCHEDULE, momentum=0.9), loss="mse")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(SAMPLES, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    recorder = RateRecorder()
    introspectable = issubclass(optimizer_class, introspect_opt.IntrospectableSGD)
    model.fit(
        x,
        y,
        batch_size=GLOBAL_BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[recorder] if introspectable else [],
    )
    if hasattr(model, "jax_state_sync"):
        model.jax_state_sync()
    kernel = model.trainable_variables[0].value
    placement = {"kernel_devices": len(kernel.sharding.device_set)}
    if introspectable:
        cache = model.optimizer._introspection_state.applied_learning_rate.value
        placement["cache_devices"] = len(cache.sharding.device_set)
    return {
        "rows": recorder.rows,
        "placement": placement,
        "iterations": int(model.optimizer.iterations.numpy()),
        "weight_bits": [
            np.asarray(w, np.float32).view(np.int32).tolist() for w in model.get_weights()
        ],
    }


def main() -> None:
    result = {
        "backend": keras.backend.backend(),
        "jax_cpu_devices": len(jax.devices("cpu")),
        "keras_devices": keras.distribution.list_devices("cpu"),
        "expected_rate_bits": [
            _bits(keras.ops.convert_to_numpy(SCHEDULE(np.int64(step))))
            for step in range(SAMPLES // GLOBAL_BATCH * EPOCHS)
        ],
        "runs": {
            "plain": _train(keras.optimizers.SGD),
            "introspectable": _train(introspect_opt.IntrospectableSGD),
            "witness": _train(WitnessSGD),
        },
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
