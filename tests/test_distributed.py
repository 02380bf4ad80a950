"""Distributed training in one process: MirroredStrategy over logical CPUs, DataParallel on JAX.

The MirroredStrategy training tests compare the introspectable optimizer with
plain ``SGD`` under the same strategy (bit-identical weights) and check the
cached rate against the rate Keras handed to ``update_step``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    SCHEDULE,
    Witness,
    bits,
    make_data,
    make_model,
    optimizer_state,
    schedule_value,
    weights_of,
)

from introspect_opt import IntrospectableSGD

BACKEND = keras.backend.backend()
GLOBAL_BATCH = 16  # 8, 4 or 16 examples per replica over 2, 4 or 1 replicas
tf_only = pytest.mark.tf_only


def mirrored_strategy(replicas: int, devices: list[str] | None = None) -> Any:
    """MirroredStrategy over ``replicas`` logical CPUs (or ``devices``), with its own group keys.

    TensorFlow's collective runtime remembers each group key with its size for
    the life of the process, and every MirroredStrategy numbers its groups from
    the class's ``_collective_key_base``: a 4-device strategy after a 2-device
    one fails ("joining a group with size4, but that group has size 2"), with
    plain SGD too. TensorFlow's own tests offset the base per strategy
    (``strategy_combinations.py``); offsetting it again afterwards leaves fresh
    keys for strategies other tests create without this helper.
    """
    cls = tf.distribute.MirroredStrategy
    cls._collective_key_base += 100_000
    strategy = cls(devices or [f"/cpu:{i}" for i in range(replicas)])
    cls._collective_key_base += 100_000
    return strategy


def _strategy(replicas: int) -> Any:
    """MirroredStrategy over ``replicas`` logical CPUs; 1: no strategy (the default one)."""
    return tf.distribute.get_strategy() if replicas == 1 else mirrored_strategy(replicas)


def _assert_same_bits(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


class _Recorder(keras.callbacks.Callback):
    """After every batch: (iterations, current_learning_rate bits, witnessed bits).

    ``helpers.WitnessRecorder`` calls ``int()`` on ``iterations``, which fails
    on a ``MirroredVariable``; ``.numpy()`` works on every variable.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, int, int]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        optimizer = self.model.optimizer
        self.rows.append(
            (
                int(optimizer.iterations.numpy()),
                bits(optimizer.current_learning_rate),
                bits(optimizer.witness.numpy()),
            )
        )


class _Loop:
    """A model, an optimizer and a distributed custom train step under one strategy.

    Each step returns, per replica, the rate Keras is about to apply
    (``optimizer.learning_rate`` read just before ``apply_gradients``, the same
    computation ``apply_gradients`` does) and ``current_learning_rate`` read in
    replica context after it, then ``current_learning_rate`` read in
    cross-replica context after ``strategy.run``, in the same ``tf.function``.
    """

    def __init__(
        self,
        replicas: int,
        optimizer_class: type = IntrospectableSGD,
        build: bool = True,
        optimizer_in_scope: bool = True,
    ):
        self.strategy = _strategy(replicas)
        self.replicas = replicas
        with self.strategy.scope():
            self.model = make_model()
        with self.strategy.scope() if optimizer_in_scope else contextlib.nullcontext():
            self.optimizer = optimizer_class(SCHEDULE, momentum=0.9)
            if build:
                self.optimizer.build(self.model.trainable_variables)
        self.introspectable = isinstance(self.optimizer, IntrospectableSGD)
        self._step = self._make_step()

    def _make_step(self) -> Any:
        model, optimizer, strategy = self.model, self.optimizer, self.strategy

        def replica_step(xb: Any, yb: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                per_example = tf.reduce_mean(tf.square(model(xb) - yb), axis=-1)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            about_to_apply = optimizer.learning_rate
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            if not self.introspectable:
                return about_to_apply, about_to_apply
            in_replica = optimizer.current_learning_rate
            # A per-replica value would break `float()` and silently differ per device.
            assert not isinstance(in_replica, tf.distribute.DistributedValues)
            return about_to_apply, in_replica

        @tf.function
        def step(batch: Any) -> tuple[Any, Any, Any]:
            about, in_replica = strategy.run(replica_step, args=batch)
            cross = optimizer.current_learning_rate if self.introspectable else tf.constant(0.0)
            local = strategy.experimental_local_results
            return local(about), local(in_replica), cross

        return step

    def checkpoint(self) -> Any:
        return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)

    def train(self, steps: int, start: int = 0) -> list[dict[str, Any]]:
        """Runs ``steps`` steps on the global batches ``start``, ``start + 1``, ..."""
        x, y = make_data(64)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).repeat()
        batches = iter(self.strategy.experimental_distribute_dataset(dataset.skip(start)))
        rows = []
        for _ in range(steps):
            about, in_replica, cross = self._step(next(batches))
            assert len(about) == len(in_replica) == self.replicas
            rows.append(
                {
                    "iterations": int(self.optimizer.iterations.numpy()),
                    "about_to_apply": [bits(v) for v in about],
                    "in_replica": [bits(v) for v in in_replica],
                    "cross_in_function": bits(cross),
                    "eager": bits(self.optimizer.current_learning_rate)
                    if self.introspectable
                    else None,
                }
            )
        return rows

    def snapshot(self) -> dict[str, Any]:
        return {
            "iterations": int(self.optimizer.iterations.numpy()),
            "optimizer": optimizer_state(self.optimizer),
            "weights": weights_of(self.model),
            "rate": bits(self.optimizer.current_learning_rate),
        }


def _assert_rows_consistent(rows: list[dict[str, Any]], first_iteration: int = 1) -> None:
    """Every context saw one value: the rate the update applied, s(n-1)."""
    for n, row in enumerate(rows, start=first_iteration):
        assert row["iterations"] == n
        applied = row["about_to_apply"][0]
        assert row["about_to_apply"] == [applied] * len(row["about_to_apply"])
        assert row["in_replica"] == [applied] * len(row["in_replica"])
        assert row["cross_in_function"] == applied
        assert row["eager"] == applied
        value = np.int32(applied).view(np.float32)
        np.testing.assert_allclose(value, schedule_value(SCHEDULE, n - 1), rtol=1e-6)


# --- MirroredStrategy: fit ------------------------------------------------


@tf_only
@pytest.mark.parametrize(
    ("replicas", "jit_compile"),
    [
        (2, False),
        (4, False),
        pytest.param(
            2,
            "auto",
            marks=pytest.mark.skipif(
                bool(tf.config.list_physical_devices("GPU")),
                reason='with a GPU visible, "auto" means XLA: see '
                "test_mirrored_fit_upstream_failures_hit_plain_sgd_too",
            ),
        ),
    ],
)
def test_mirrored_fit(replicas: int, jit_compile: Any) -> None:
    """Fit under MirroredStrategy: the rate update_step received, weights bit-identical to SGD."""
    x, y = make_data(64)
    results = {}
    for optimizer_class in (keras.optimizers.SGD, Witness):
        keras.backend.clear_session(free_memory=False)
        with _strategy(replicas).scope():
            model = make_model()
            model.compile(
                optimizer_class(SCHEDULE, momentum=0.9), loss="mse", jit_compile=jit_compile
            )
        recorder = _Recorder()
        callbacks = [recorder] if optimizer_class is Witness else []
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0, callbacks=callbacks)
        results[optimizer_class] = (model, recorder.rows)
    model, rows = results[Witness]
    assert model.jit_compile is False  # Keras resolves "auto" to no XLA on CPU-only machines
    assert [row[0] for row in rows] == [1, 2, 3, 4]
    for iterations, current, witnessed in rows:
        assert current == witnessed  # the exact bits update_step received
        value = np.int32(current).view(np.float32)
        np.testing.assert_allclose(value, schedule_value(SCHEDULE, iterations - 1), rtol=1e-6)
    _assert_same_bits(weights_of(model), weights_of(results[keras.optimizers.SGD][0]))


@tf_only
@pytest.mark.parametrize(
    ("jit_compile", "steps_per_execution", "accumulation", "error", "message"),
    [
        # XLA cannot read the other replicas' variables from one device.
        (True, 1, None, tf.errors.InvalidArgumentError, "Trying to access resource"),
        # Keras's multi-step while loop around merge_call (keras-team/keras#19246).
        (False, 2, None, tf.errors.InvalidArgumentError, "You must feed a value for placeholder"),
        # Keras applies accumulated gradients inside ops.cond: merge_call in a Cond.
        (False, 1, 2, RuntimeError, "`merge_call` called while defining a new graph"),
    ],
    ids=["jit_compile=True", "steps_per_execution=2", "gradient_accumulation_steps=2"],
)
def test_mirrored_fit_upstream_failures_hit_plain_sgd_too(
    jit_compile: bool, steps_per_execution: int, accumulation: Any, error: type, message: str
) -> None:
    """Keras 3.15 fit under a 2-device MirroredStrategy fails here for plain SGD and ours alike.

    When this test fails, Keras fixed it: make the path a tested one in
    test_mirrored_fit and update docs/distributed.md.
    """
    x, y = make_data(32)
    for optimizer_class in (keras.optimizers.SGD, IntrospectableSGD):
        keras.backend.clear_session(free_memory=False)
        with _strategy(2).scope():
            model = make_model()
            model.compile(
                optimizer_class(SCHEDULE, gradient_accumulation_steps=accumulation),
                loss="mse",
                jit_compile=jit_compile,
                steps_per_execution=steps_per_execution,
            )
        with pytest.raises(error, match=message):
            model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0)


# --- MirroredStrategy: custom loop ---------------------------------------


@tf_only
@pytest.mark.parametrize("replicas", [2, 4])
def test_mirrored_custom_loop(replicas: int) -> None:
    """Custom loop: replica, cross-replica and eager reads all equal the applied rate."""
    introspectable, plain = _Loop(replicas), _Loop(replicas, keras.optimizers.SGD)
    rows = introspectable.train(5)
    plain.train(5)
    _assert_rows_consistent(rows)
    _assert_same_bits(weights_of(introspectable.model), weights_of(plain.model))
    _assert_same_bits(optimizer_state(introspectable.optimizer), optimizer_state(plain.optimizer))


# --- Reading the rate from every context ---------------------------------


@tf_only
def test_every_context_reads_one_plain_tensor() -> None:
    """Eager, scope, replica, merge_call, traced: one scalar tensor everywhere, never PerReplica."""
    loop = _Loop(2)
    strategy, optimizer = loop.strategy, loop.optimizer
    seen: dict[str, list[Any]] = {}

    def record(context: str, value: Any) -> Any:
        seen.setdefault(context, []).append(value)
        return value

    def in_replica() -> Any:
        return record("replica", optimizer.current_learning_rate)

    def in_merge_call() -> Any:
        context = tf.distribute.get_replica_context()
        return context.merge_call(lambda _: record("merge_call", optimizer.current_learning_rate))

    @tf.function
    def traced() -> Any:
        local = strategy.experimental_local_results
        return (
            local(strategy.run(in_replica)),
            local(strategy.run(in_merge_call)),
            record("cross_replica_traced", optimizer.current_learning_rate),
        )

    for updates in (0, 3):  # before any update (derived) and after three (cached)
        if updates:
            loop.train(updates)
        eager = record("eager", optimizer.current_learning_rate)
        with strategy.scope():
            record("eager_in_scope", optimizer.current_learning_rate)
        eager_replicas = strategy.experimental_local_results(strategy.run(in_replica))
        replicas, merged, cross = traced()
        for context, values in seen.items():
            for value in values:
                assert isinstance(value, tf.Tensor), (context, type(value))
                assert not isinstance(value, tf.distribute.DistributedValues), context
                assert value.shape == () and value.dtype == tf.float32, context
        expected = bits(eager)
        assert len(eager_replicas) == len(replicas) == 2
        returned = [*eager_replicas, *replicas, *merged, cross, seen["eager_in_scope"][-1]]
        assert [bits(v) for v in returned] == [expected] * len(returned)
        # The traced contexts are recorded once, when `traced` is traced.
        assert set(seen) == {
            "eager",
            "eager_in_scope",
            "replica",
            "merge_call",
            "cross_replica_traced",
        }
        assert float(eager) == pytest.approx(float(schedule_value(SCHEDULE, max(updates - 1, 0))))


@tf_only
@pytest.mark.parametrize(
    ("optimizer_class", "message"),
    [
        (keras.optimizers.SGD, r"Mixing different tf\.distribute\.Strategy objects"),
        (IntrospectableSGD, r"created outside the scope of the MirroredStrategy"),
    ],
)
def test_optimizer_created_outside_scope_and_built_in_the_step_fails(
    optimizer_class: type, message: str
) -> None:
    """Made outside strategy.scope(), built in strategy.run: Keras's error, ours says why."""
    loop = _Loop(2, optimizer_class, build=False, optimizer_in_scope=False)
    with pytest.raises(RuntimeError, match=message):
        loop.train(1)


@tf_only
def test_optimizer_built_outside_scope_is_refused_where_sgd_double_counts() -> None:
    """Built outside strategy.scope(): Keras applies each replica's update; ours refuses."""
    plain = _Loop(2, keras.optimizers.SGD, optimizer_in_scope=False)
    for _ in range(3):
        plain.train(1)
    # Keras's trap: each of the 2 replicas counts its own update, so the
    # schedule runs twice as fast.
    assert int(plain.optimizer.iterations.numpy()) == 6
    ours = _Loop(2, IntrospectableSGD, optimizer_in_scope=False)
    weights = weights_of(ours.model)
    with pytest.raises(
        RuntimeError,
        match=r"IntrospectableSGD 'sgd(_\d+)?' was created outside the scope of the "
        r"MirroredStrategy running this update \(2 replicas\).*inside `strategy.scope\(\)`",
    ):
        ours.train(1)
    assert int(ours.optimizer.iterations.numpy()) == 0
    _assert_same_bits(weights_of(ours.model), weights)  # nothing was applied


@tf_only
def test_fit_of_a_model_built_in_the_scope_and_compiled_outside_is_refused_clearly() -> None:
    """Model in strategy.scope(), optimizer and compile outside: Keras double-counts, ours says why.

    ``fit`` builds the optimizer in the model's strategy scope: the refusal
    comes at that build, before any variable is made (it was an obscure
    "Must not nest tf.distribute.Strategy scopes" from creating the state).
    """
    x, y = np.ones((32, 6), "float32"), np.ones((32, 3), "float32")
    counts = {}
    for optimizer_class in (keras.optimizers.SGD, IntrospectableSGD):
        strategy = mirrored_strategy(2)
        with strategy.scope():
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
        model.compile(optimizer_class(0.1), loss="mse")
        if optimizer_class is IntrospectableSGD:
            weights = weights_of(model)
            with pytest.raises(RuntimeError, match=r"created outside the scope of the Mirrored"):
                model.fit(x, y, batch_size=16, verbose=0)
            _assert_same_bits(weights_of(model), weights)
        else:
            model.fit(x, y, batch_size=16, verbose=0)
        counts[optimizer_class.__name__] = int(model.optimizer.iterations.numpy())
    assert counts == {"SGD": 4, "IntrospectableSGD": 0}  # 2 steps, counted twice by Keras


# --- Checkpoints across replica counts -----------------------------------


# Each format moves down and up once; a checkpoint into one replica restores
# into an optimizer that is not built yet.
@pytest.mark.slow
@tf_only
@pytest.mark.parametrize(("source", "target"), [(4, 1), (2, 4)])
def test_tf_checkpoint_across_replica_counts(tmp_path: Path, source: int, target: int) -> None:
    """tf.train.Checkpoint written under one replica count restores under another, nothing lost."""
    writer = _Loop(source)
    writer.train(3)
    path = writer.checkpoint().save(str(tmp_path / "ckpt"))
    saved = writer.snapshot()
    uninterrupted = writer.train(2, start=3)

    # Restored before the optimizer is built when going to one replica
    # (deferred restoration), into a built one otherwise.
    deferred = target == 1
    readers = {}
    for optimizer_class in (IntrospectableSGD, keras.optimizers.SGD):
        reader = _Loop(target, optimizer_class, build=not deferred)
        status = reader.checkpoint().restore(path)
        if deferred:
            with reader.strategy.scope():
                reader.optimizer.build(reader.model.trainable_variables)
        status.assert_existing_objects_matched()
        readers[optimizer_class] = reader
    restored = readers[IntrospectableSGD]
    after = restored.snapshot()
    assert after["iterations"] == saved["iterations"] == 3
    assert after["rate"] == saved["rate"]
    _assert_same_bits(after["optimizer"], saved["optimizer"])  # iterations and momentum
    _assert_same_bits(after["weights"], saved["weights"])

    continued = restored.train(2, start=3)
    readers[keras.optimizers.SGD].train(2, start=3)
    _assert_rows_consistent(continued, first_iteration=4)
    assert [r["eager"] for r in continued] == [r["eager"] for r in uninterrupted]
    _assert_same_bits(weights_of(restored.model), weights_of(readers[keras.optimizers.SGD].model))
    # Another replica count sums the gradients in another order.
    for a, b in zip(weights_of(restored.model), weights_of(writer.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@tf_only
@pytest.mark.parametrize(("source", "target"), [(4, 2), (1, 4)])
def test_keras_file_across_replica_counts(tmp_path: Path, source: int, target: int) -> None:
    """A .keras file saved under one replica count loads under another's scope, nothing lost."""
    x, y = make_data(64)
    with _strategy(source).scope():
        writer = make_model()
        writer.compile(IntrospectableSGD(SCHEDULE, momentum=0.9), loss="mse")
    writer.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    writer.save(path)
    saved_rate = bits(writer.optimizer.current_learning_rate)
    writer.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)

    strategy = _strategy(target)
    with strategy.scope():
        loaded = {"ours": keras.models.load_model(path)}
        # The same file into plain SGD (README, "Files and checkpoints").
        plain = keras.models.load_model(path, compile=False)
        plain.compile(keras.optimizers.SGD(SCHEDULE, momentum=0.9), loss="mse")
        plain.optimizer.build(plain.trainable_variables)
        plain.load_weights(path)
        loaded["plain"] = plain
    model = loaded["ours"]
    assert type(model.optimizer) is IntrospectableSGD
    assert type(loaded["plain"].optimizer) is keras.optimizers.SGD
    assert int(model.optimizer.iterations.numpy()) == 4
    assert bits(model.optimizer.current_learning_rate) == saved_rate
    expected_optimizer = optimizer_state(loaded["plain"].optimizer)
    _assert_same_bits(optimizer_state(model.optimizer), expected_optimizer)
    assert np.any(expected_optimizer[-1] != 0)  # momentum slots made the trip
    _assert_same_bits(weights_of(model), weights_of(loaded["plain"]))

    for m in loaded.values():
        m.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 8
    assert bits(model.optimizer.current_learning_rate) == bits(
        writer.optimizer.current_learning_rate
    )
    assert float(model.optimizer.current_learning_rate) == pytest.approx(
        float(schedule_value(SCHEDULE, 7)), rel=1e-6
    )
    _assert_same_bits(weights_of(model), weights_of(loaded["plain"]))
    for a, b in zip(weights_of(model), weights_of(writer), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --- Keras distribution API on JAX ----------------------------------------

WORKER = Path(__file__).parent / "distributed_workers" / "jax_data_parallel.py"


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
@pytest.mark.skipif(
    BACKEND != "jax", reason="JAX's distribution API: it runs in the JAX pass (a subprocess)"
)
@pytest.mark.slow
def test_jax_data_parallel_over_four_devices() -> None:
    """DataParallel on 4 JAX CPU devices: the applied rate each step, weights as plain SGD."""
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS")}
    done = subprocess.run(
        [sys.executable, str(WORKER)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["backend"] == "jax"
    assert result["jax_cpu_devices"] == 4
    assert result["keras_devices"] == ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]
    runs = result["runs"]
    for name in ("plain", "introspectable", "witness"):
        assert runs[name]["placement"]["kernel_devices"] == 4  # replicated by DataParallel
        assert runs[name]["iterations"] == 8
        assert runs[name]["weight_bits"] == runs["plain"]["weight_bits"], name
    expected = result["expected_rate_bits"]
    for name in ("introspectable", "witness"):
        assert runs[name]["placement"]["cache_devices"] == 4
        rows = runs[name]["rows"]
        assert [row["iterations"] for row in rows] == list(range(1, 9))
        for row in rows:
            rate = np.int32(row["rate_bits"]).view(np.float32)
            eager = np.int32(expected[row["iterations"] - 1]).view(np.float32)
            np.testing.assert_allclose(rate, eager, rtol=1e-6)  # compiled vs eager: 1 ulp
    for row in runs["witness"]["rows"]:
        assert row["rate_bits"] == row["witness_bits"]  # the exact bits update_step received
    assert [r["rate_bits"] for r in runs["introspectable"]["rows"]] == [
        r["rate_bits"] for r in runs["witness"]["rows"]
    ]
