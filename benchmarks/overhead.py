"""Step-time overhead of IntrospectableSGD against plain keras.optimizers.SGD.

Everything is measured side by side in one process: for each ``jit_compile``
setting, every variant trains the same 784-256-10 MLP (batch 64) for
``--steps`` steps per round, in a shuffled order each round, and the script
prints per-variant median step times and the ratio to plain SGD measured in the
same round (median and min-max spread over rounds).

Variants:
  * ``sgd``: plain ``keras.optimizers.SGD`` with an ``ExponentialDecay`` schedule;
  * ``sgd-again``: a second, identical plain SGD model: the A/A control whose
    ratio shows the measurement noise of this machine;
  * ``introspectable``: ``IntrospectableSGD``, same schedule (the rate is cached
    on every step; nothing is read back);
  * ``introspectable+read``: the same, plus a per-batch callback reading
    ``float(optimizer.current_learning_rate)`` (a host read per batch);
  * ``sgd+schedule-callback``: plain SGD plus the usual recipe, a per-batch
    callback computing ``float(schedule(optimizer.iterations))``.

Each round times ``--steps`` steps of every variant, in a shuffled order;
ratios are taken between timings of the same round, so slow drifts of the
machine cancel. The A/A control shows how far apart two identical runs land.

A second table runs the same ``--steps`` training steps inside a single
``tf.function`` call (a ``tf.range`` loop), which removes the per-step Python
and host synchronisation of ``fit`` and isolates what the optimizer itself
adds on the device.

The logging tables (``--tables logging``) compare, under ``fit``:
  * ``introspectable+logger-epoch`` / ``+logger-batch``: ``LearningRateLogger``
    reading once per epoch / after every batch;
  * ``sgd+empty-batch-callback``: a per-batch callback that does nothing, the
    floor of any per-batch callback (Keras then converts every batch's logs to
    Python numbers and stops dispatching batch callbacks asynchronously);
  * ``sgd+tensorboard``: Keras's ``TensorBoard(update_freq="batch")``;
  * ``sgd+schedule-callback``: the per-batch recipe above;
and, with ``steps_per_execution=32``, every step's rate to TensorBoard:
  * ``introspectable+every-step``: ``RateHistoryToTensorBoard(log_dir)``, one
    read per epoch (the default interval);
  * ``introspectable+every-step-per-block``: the same, read after every block
    of 32 steps (``interval="batch"``).

Run: ``python benchmarks/overhead.py [--steps 300] [--rounds 21] [--tables all]``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import tensorflow as tf

from introspect_opt import IntrospectableSGD, LearningRateLogger, RateHistoryToTensorBoard

BATCH = 64


def schedule() -> Any:
    return keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=100, decay_rate=0.96)


class ScheduleRecipe(keras.callbacks.Callback):
    """The common workaround: re-evaluate the schedule on the host every batch."""

    def __init__(self, sched: Any) -> None:
        super().__init__()
        self.sched, self.last = sched, 0.0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.last = float(self.sched(self.model.optimizer.iterations))


class EmptyBatchCallback(keras.callbacks.Callback):
    """Does nothing per batch: the floor of any per-batch callback in Keras.

    Defining ``on_train_batch_end`` at all makes Keras convert each batch's
    logs to Python numbers (a wait for the device) and stop dispatching batch
    callbacks asynchronously.
    """

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        return None


class ReadApplied(keras.callbacks.Callback):
    """Reads the applied rate on the host every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.last = 0.0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.last = float(self.model.optimizer.current_learning_rate)


def logging_callbacks(name: str, sched: Any, log_dir: str) -> list[Any]:
    """The callbacks of a logging variant (issue: see the rate where users look)."""
    if name == "sgd+tensorboard":
        return [
            keras.callbacks.TensorBoard(log_dir=os.path.join(log_dir, "keras"), update_freq="batch")
        ]
    if name == "sgd+schedule-callback":
        return [ScheduleRecipe(sched)]
    if name == "introspectable+logger-epoch":
        return [LearningRateLogger("epoch")]
    if name == "introspectable+logger-batch":
        return [LearningRateLogger("batch")]
    if name == "introspectable+every-step":
        # The default interval: one read per epoch, every update's rate kept
        # on the device until then.
        return [RateHistoryToTensorBoard(os.path.join(log_dir, "ours"))]
    if name == "introspectable+every-step-per-block":
        return [RateHistoryToTensorBoard(os.path.join(log_dir, "ours"), interval="batch")]
    if name == "sgd+empty-batch-callback":
        return [EmptyBatchCallback()]
    return []


def make_variant(
    name: str, jit_compile: bool, steps_per_execution: int = 1, log_dir: str = ""
) -> tuple[Any, list[Any]]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    sched = schedule()
    callbacks: list[Any] = logging_callbacks(name, sched, log_dir)
    if name.startswith("introspectable"):
        optimizer: Any = IntrospectableSGD(sched, momentum=0.9)
        if name.endswith("+read"):
            callbacks.append(ReadApplied())
    else:
        optimizer = keras.optimizers.SGD(sched, momentum=0.9)
        if name.endswith("+schedule-callback"):
            callbacks.append(ScheduleRecipe(sched))
    model.compile(
        optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model, callbacks


def dataset() -> Any:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * 16, 784)).astype("float32")
    y = rng.integers(0, 10, size=(BATCH * 16,)).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat().prefetch(4)


def time_fit(model: Any, callbacks: list[Any], data: Any, steps: int) -> float:
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=callbacks, shuffle=False)
    return (time.perf_counter() - start) / steps


def fit_runners(
    jit_compile: bool, variants: list[str], steps_per_execution: int = 1, log_dir: str = ""
) -> dict[str, Callable[[int], float]]:
    """One ``steps -> seconds per step`` runner per variant, timing ``model.fit``."""
    data = dataset()
    runners = {}
    for name in variants:
        model, callbacks = make_variant(name, jit_compile, steps_per_execution, log_dir)

        def run(steps: int, model: Any = model, callbacks: list[Any] = callbacks) -> float:
            return time_fit(model, callbacks, data, steps)

        run(20)  # trace and warm up
        runners[name] = run
    return runners


def interleave(
    runners: dict[str, Callable[[int], float]], steps: int, rounds: int
) -> dict[str, list[float]]:
    """Times every runner once per round, in a shuffled order each round."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            times[name].append(runners[name](steps))
    return times


def make_loop(name: str, jit_compile: bool) -> Callable[[int], float]:
    """``steps`` training steps inside one tf.function call: no Python per step."""
    model, _ = make_variant(name, jit_compile)
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, 784)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=(BATCH,)).astype("int32"))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit_compile)
    def run(n: Any) -> Any:
        loss = tf.constant(0.0)
        for _ in tf.range(n):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def timed(steps: int) -> float:
        start = time.perf_counter()
        float(run(tf.constant(steps)))
        return (time.perf_counter() - start) / steps

    timed(5)  # trace and compile
    return timed


def summarize(times: dict[str, list[float]], baseline: str = "sgd") -> list[tuple[str, ...]]:
    rows = []
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, times[baseline], strict=True)]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (1.0, 1.0, 1.0)
        rows.append(
            (
                name,
                f"{statistics.median(values) * 1e3:.3f}",
                f"{statistics.median(ratios):.3f}",
                f"{q1:.3f}-{q3:.3f}",
            )
        )
    return rows


def print_table(printer: Callable[[str], None], title: str, rows: list[tuple[bool, Any]]) -> None:
    printer(f"### {title}")
    printer("")
    printer(
        "| jit_compile | variant | median ms/step | ratio to sgd (median of rounds) "
        "| ratio, middle half of rounds |\n|---|---|---|---|---|"
    )
    for jit_compile, times in rows:
        for row in summarize(times):
            printer(f"| {jit_compile} | " + " | ".join(row) + " |")
    printer("")


def main(argv: list[str] | None = None, printer: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument(
        "--tables",
        choices=["all", "optimizer", "logging"],
        default="all",
        help="the optimizer's own overhead, the logging callbacks', or both",
    )
    parser.add_argument(
        "--jit",
        choices=["both", "off", "on"],
        default="both",
        help="jit_compile settings to measure (XLA off, on, or both)",
    )
    args = parser.parse_args(argv)
    # One inter-op thread: on small machines TensorFlow's thread pools otherwise
    # compete with each other and with tf.data, which is most of the noise.
    tf.config.threading.set_inter_op_parallelism_threads(1)
    printer(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; "
        f"784-256-10 MLP, batch {BATCH}, {args.steps} steps per variant and round, "
        f"{args.rounds} rounds"
    )
    printer("")
    jit_modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.jit]
    if args.tables in ("all", "optimizer"):
        variants = [
            "sgd",
            "sgd-again",
            "introspectable",
            "introspectable+read",
            "sgd+schedule-callback",
        ]
        fit_rows = [
            (jit, interleave(fit_runners(jit, variants), args.steps, args.rounds))
            for jit in jit_modes
        ]
        print_table(printer, "`model.fit`, one call per step (what users run)", fit_rows)
        loop_rows = []
        for jit in jit_modes:
            loops = {name: make_loop(name, jit) for name in variants[:3]}
            loop_rows.append((jit, interleave(loops, args.steps, args.rounds)))
        print_table(
            printer,
            "All steps in one `tf.function` call (the optimizer's own device cost)",
            loop_rows,
        )
    if args.tables in ("all", "logging"):
        with tempfile.TemporaryDirectory() as log_dir:
            logging_variants = [
                "sgd",
                "sgd-again",
                "introspectable+logger-epoch",
                "introspectable+logger-batch",
                "sgd+empty-batch-callback",
                "sgd+tensorboard",
                "sgd+schedule-callback",
            ]
            rows = [
                (
                    jit,
                    interleave(
                        fit_runners(jit, logging_variants, 1, log_dir), args.steps, args.rounds
                    ),
                )
                for jit in jit_modes
            ]
            print_table(printer, "Logging the rate under `fit`, one step per call", rows)
            # Whole blocks of 32 steps per call: the step count is rounded up.
            steps = -(-args.steps // 32) * 32
            block_variants = [
                "sgd",
                "sgd-again",
                "introspectable+every-step",
                "introspectable+every-step-per-block",
            ]
            rows = [
                (jit, interleave(fit_runners(jit, block_variants, 32, log_dir), steps, args.rounds))
                for jit in jit_modes
            ]
            print_table(
                printer,
                "Every step's rate to TensorBoard, `steps_per_execution=32`",
                rows,
            )


if __name__ == "__main__":
    main()
