"""Cost of diagnostics at 29M parameters: step time and peak memory, against diagnostics off.

A four-layer MLP (2048-4096-4096-1024-10, 29,379,594 trainable parameters,
112 MB of float32 weights, the largest variable 64 MB) trains with
``model.fit`` on random data, batch 32 (``--batch``; small, so that the
optimizer's share of the step shows), in four configurations:

* ``plain``: ``keras.optimizers.Adam``, the reference;
* ``off``: ``IntrospectableAdam``, diagnostics off (the baseline of the ratios);
* ``global``: the same with ``record_diagnostics(model)``;
* ``per_variable``: the same with ``record_diagnostics(model, per_variable=True)``.

Peak memory (measured first): each configuration runs in a fresh process
(one subprocess per configuration and repeat, so that peaks do not mix) for
one step (which builds the optimizer, traces and compiles), then
``--warmup`` more, with ``MALLOC_MMAP_THRESHOLD_=1048576`` (glibc: every
buffer over 1 MB comes from ``mmap`` and leaves the resident set when freed,
so that the resident set follows the live buffers). Reported: the process's
peak resident set (``ru_maxrss``: imports, model, Adam's two slots,
gradients, temporaries, and the compiler's memory while it compiles the
step; Linux carries a parent's ``ru_maxrss`` into the child across ``exec``,
so the parent has not imported Keras yet when it starts them); how far the
resident set rose during the steps after the first above its size just
before them (Linux, where the high-water mark can be reset; otherwise
"n/a"): what one step allocates and frees (gradients, temporaries, the
diagnostics' copies), compilation left out; the allocator's peak during those steps
where the backend reports one (``tf.config.experimental.get_memory_info(device)
["peak"]`` on TensorFlow;
``jax.devices()[0].memory_stats()["peak_bytes_in_use"]`` on JAX). On a CPU
both report nothing and the output says why, except TensorFlow's with
``--tf-cpu-bfc``: the memory processes then run with
``TF_CPU_ALLOCATOR_USE_BFC=true``, whose allocator keeps the statistics
(every tensor TensorFlow allocates, not XLA's own buffers under
``jit_compile=True``). On JAX, also XLA's own accounting of one compiled
training step (``memory_analysis()``: its temporary buffers, and all its
buffers), exact on any device; the resident set also counts what the
allocator caches, so compare ``plain`` with ``off`` (equal but for a few
scalars) to see its noise. "extra" is a configuration's
median minus ``off``'s, in MB and as a fraction of the model's weights: a
copy of every weight at every update (how diagnostics worked before
per-variable diagnostics) shows up as about +1.0x; a copy of one variable at
a time as at most the largest variable (printed below the table).

Step time: the four models live in one process. After ``--warmup`` steps
each (tracing included), every round trains each model for ``--steps`` steps
(one ``fit`` call, timed from the first batch's start to the last batch's
end), in a shuffled order; ratios are taken between timings of the same
round, so slow drifts of a shared machine cancel. The table gives the median
step time, the median over rounds of the ratio to ``off`` with the middle
half (25th-75th percentile) of those ratios, and the median ratio to
``plain``; then the same for CPU time (every thread of the process), which
moves less than wall time where other jobs share the machine. After timing,
the script reads the diagnostics back and says
whether they were recorded, so that a configuration that silently recorded
nothing cannot pass for a measurement.

Backends: TensorFlow (``jit_compile`` False by default, which is what Keras's
``"auto"`` picks on a machine without a GPU; ``--jit on`` or ``--jit both``
for XLA) and JAX (always jitted; ``--jit`` is ignored).

Run::

    python benchmarks/per_variable.py --backend tensorflow [--jit off|on|both]
    python benchmarks/per_variable.py --backend jax
    # or: KERAS_BACKEND=jax python benchmarks/per_variable.py
    # options: [--steps 3] [--rounds 5] [--warmup 3] [--batch 32] [--memory-repeats 1]
    #          [--tables all|time|memory] [--tf-cpu-bfc] [--quick]

On 2 CPU cores the default run takes 3 to 4 minutes per backend and
``jit_compile`` setting, most of it building and tracing 29M-parameter models.

``--quick`` (a 64-128-128-32-10 MLP, two rounds of two steps) is a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _memory import reset_peak_rss, status_kb  # benchmarks/, first on sys.path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CONFIGS = ("plain", "off", "global", "per_variable")
BATCH = 32  # the default
FULL_WIDTHS = (2048, 4096, 4096, 1024, 10)
QUICK_WIDTHS = (64, 128, 128, 32, 10)
MB = 1024 * 1024
MMAP_THRESHOLD = MB  # glibc: allocations above it come from mmap (see run_child)
JIT_MODES = {"both": (False, True), "off": (False,), "on": (True,)}


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def _versions(backend: str) -> str:
    """Library versions, read without importing them (see ``main``)."""
    engine = (
        f"JAX {_version('jax')}" if backend == "jax" else f"TensorFlow {_version('tensorflow')}"
    )
    return f"{engine}, Keras {_version('keras')}"


def _backend_from(argv: list[str] | None) -> str:
    """The backend named by ``--backend``, else ``KERAS_BACKEND``, else TensorFlow.

    Keras reads ``KERAS_BACKEND`` when first imported, so this runs before
    any import of Keras.
    """
    args = sys.argv[1:] if argv is None else argv
    for index, arg in enumerate(args):
        if arg == "--backend" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return os.environ.get("KERAS_BACKEND", "tensorflow")


# --- the model ------------------------------------------------------------------


def parameter_count(widths: tuple[int, ...]) -> int:
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def make_model(config: str, widths: tuple[int, ...], jit_compile: bool) -> Any:
    import keras

    import introspect_opt

    keras.utils.set_random_seed(0)
    layers: list[Any] = [keras.Input((widths[0],))]
    layers += [keras.layers.Dense(w, activation="relu") for w in widths[1:-1]]
    layers.append(keras.layers.Dense(widths[-1]))
    model = keras.Sequential(layers)
    optimizer: Any = (
        keras.optimizers.Adam(1e-4)
        if config == "plain"
        else introspect_opt.IntrospectableAdam(1e-4)
    )
    model.compile(
        optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    if config == "global":
        introspect_opt.record_diagnostics(model)
    elif config == "per_variable":
        introspect_opt.record_diagnostics(model, per_variable=True)
    return model


Data = tuple[Any, Any, int]  # inputs, labels, batch size


def make_data(widths: tuple[int, ...], steps: int, batch: int) -> Data:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * steps, widths[0])).astype("float32")
    y = rng.integers(0, widths[-1], size=(batch * steps,)).astype("int32")
    return x, y, batch


def train(model: Any, data: Data, steps: int) -> tuple[float, float]:
    """Wall and CPU seconds per step of one ``fit`` call of ``steps`` steps.

    Timed from the first batch's start to the last batch's end, so that
    ``fit``'s own set-up (data adapter, callbacks) is left out. The timer is a
    batch callback, so Keras waits for each step to finish before the next
    one starts (as with any per-batch callback): every configuration pays
    that alike. CPU seconds count every thread of this process; where other
    jobs share the machine they move less than wall seconds.
    """
    import keras

    class StepTimer(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
        def __init__(self) -> None:
            super().__init__()
            self.start = self.end = (0.0, 0.0)

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if batch == 0:
                self.start = (time.perf_counter(), time.process_time())

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.end = (time.perf_counter(), time.process_time())

    timer = StepTimer()
    x, y, batch = data
    model.fit(
        x,
        y,
        batch_size=batch,
        epochs=1,
        steps_per_epoch=steps,
        shuffle=False,
        verbose=0,
        callbacks=[timer],
    )
    wall, cpu = (end - start for start, end in zip(timer.start, timer.end, strict=True))
    return wall / steps, cpu / steps


def recorded(model: Any, config: str) -> str:
    """What the diagnostics hold after training: proof that a configuration recorded."""
    import math

    import introspect_opt

    if config in ("plain", "off"):
        return "-"
    values = introspect_opt.last_update_diagnostics(model)
    text = f"gradient_norm {values['gradient_norm']:.3g}"
    if config == "per_variable":
        rows = introspect_opt.last_update_diagnostics(model, per_variable=True)
        finite = sum(math.isfinite(row["update_to_weight_ratio"]) for row in rows.values())
        text += f"; {finite} of {len(model.trainable_variables)} variables recorded"
    return text


# --- step time -------------------------------------------------------------------


Times = dict[str, list[tuple[float, float]]]


def time_configs(
    widths: tuple[int, ...], jit_compile: bool, steps: int, rounds: int, warmup: int, batch: int
) -> tuple[Times, dict[str, str]]:
    """Wall and CPU seconds per step of every configuration, one pair per round."""
    data = make_data(widths, max(steps, warmup), batch)
    models = {config: make_model(config, widths, jit_compile) for config in CONFIGS}
    for model in models.values():
        train(model, data, warmup)  # trace and warm up
    times: Times = {config: [] for config in CONFIGS}
    order = list(CONFIGS)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for config in order:
            times[config].append(train(models[config], data, steps))
    proofs = {config: recorded(model, config) for config, model in models.items()}
    return times, proofs


def _ratios(values: list[float], baseline: list[float]) -> list[float]:
    return [v / b for v, b in zip(values, baseline, strict=True)]


def _middle_half(ratios: list[float]) -> str:
    if len(ratios) < 2:
        return f"{ratios[0]:.3f}-{ratios[0]:.3f}"
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f"{q1:.3f}-{q3:.3f}"


def time_rows(jit: str, times: Times, proofs: dict[str, str]) -> list[str]:
    rows = []
    for config in CONFIGS:
        wall, cpu = ([pair[i] for pair in times[config]] for i in (0, 1))
        off_wall, off_cpu = ([pair[i] for pair in times["off"]] for i in (0, 1))
        plain_wall = [pair[0] for pair in times["plain"]]
        to_off = _ratios(wall, off_wall)
        cpu_to_off = _ratios(cpu, off_cpu)
        rows.append(
            f"| {jit} | {config} | {statistics.median(wall) * 1e3:.0f} "
            f"| {statistics.median(to_off):.3f}x | {_middle_half(to_off)} "
            f"| {statistics.median(_ratios(wall, plain_wall)):.3f}x "
            f"| {statistics.median(cpu) * 1e3:.0f} | {statistics.median(cpu_to_off):.3f}x "
            f"| {_middle_half(cpu_to_off)} | {proofs[config]} |"
        )
    return rows


# --- peak memory -------------------------------------------------------------------


def _tf_device() -> str:
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return str(devices[0].name.replace("/device:", ""))


def _reset_device_peak(backend: str) -> None:
    """Resets TensorFlow's allocator peak where it keeps one (JAX's cannot be reset)."""
    if backend == "tensorflow":
        import tensorflow as tf

        with contextlib.suppress(ValueError):  # no allocator statistics: _device_peak says so
            tf.config.experimental.reset_memory_stats(_tf_device())


def _device_peak(backend: str) -> tuple[float | None, str]:
    """The device allocator's peak in MB, or None with the reason."""
    if backend == "tensorflow":
        import tensorflow as tf

        name = _tf_device()
        try:
            peak = tf.config.experimental.get_memory_info(name)["peak"]
        except ValueError as error:  # on a CPU, unless TF_CPU_ALLOCATOR_USE_BFC=true
            return None, (
                f"get_memory_info({name!r}) raised {type(error).__name__}: {error} "
                "(--tf-cpu-bfc runs TensorFlow's CPU allocator that keeps them)"
            )
        note = f"get_memory_info({name!r})['peak'], reset after the first step"
        if name.startswith("CPU") and os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"):
            note += " (TF_CPU_ALLOCATOR_USE_BFC=true; XLA's own buffers are not in it)"
        return peak / MB, note
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats()
        if not stats or "peak_bytes_in_use" not in stats:
            return None, f"jax.devices()[0].memory_stats() is {stats!r} on {device}"
        return stats["peak_bytes_in_use"] / MB, f"memory_stats()['peak_bytes_in_use'] on {device}"
    return None, f"no device statistics for backend {backend!r}"


def xla_step_buffers(model: Any, data: Data) -> tuple[float | None, float | None]:
    """JAX: MB of temporary buffers, and of all buffers, of one compiled training step.

    XLA's own accounting (``compiled.memory_analysis()``) of a step built from
    Keras's public stateless API as ``fit`` builds it on JAX (forward,
    gradients, ``optimizer.stateless_apply``; state donated). Exact and the
    same on every device, where the resident set also counts the
    allocator's caching. All buffers: arguments + outputs - aliased + temporaries.
    """
    import jax
    import keras

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(trainable: Any, non_trainable: Any, optimizer_state: Any, x: Any, y: Any) -> Any:
        def compute(trainable: Any) -> Any:
            y_pred, non_trainable_after = model.stateless_call(
                trainable, non_trainable, x, training=True
            )
            return loss_fn(y, y_pred), non_trainable_after

        (loss, non_trainable), grads = jax.value_and_grad(compute, has_aux=True)(trainable)
        trainable, optimizer_state = model.optimizer.stateless_apply(
            optimizer_state, grads, trainable
        )
        return loss, trainable, non_trainable, optimizer_state

    x, y, batch = data
    arguments = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        x[:batch],
        y[:batch],
    )
    compiled = jax.jit(step, donate_argnums=(0, 2)).lower(*arguments).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:  # a platform without XLA's accounting
        return None, None
    temp = analysis.temp_size_in_bytes
    total = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + temp
    )
    return temp / MB, total / MB


def child(config: str, widths: tuple[int, ...], jit_compile: bool, steps: int, batch: int) -> None:
    """One configuration in this (fresh) process; prints its peaks as JSON."""
    import gc
    import resource

    import keras

    backend = keras.backend.backend()
    data = make_data(widths, steps, batch)
    model = make_model(config, widths, jit_compile)
    train(model, data, 1)  # builds the optimizer, traces and compiles the step
    # ru_maxrss cannot be reset; the high-water mark behind VmHWM can, which
    # also lowers what ru_maxrss reports afterwards: read it before as well.
    maxrss_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gc.collect()
    resettable = reset_peak_rss()
    before = status_kb("VmRSS") if resettable else None
    _reset_device_peak(backend)
    train(model, data, steps)
    peak_after = status_kb("VmHWM") if resettable else None
    maxrss = max(maxrss_first, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    device_mb, device_note = _device_peak(backend)
    xla_temp_mb = xla_total_mb = None
    if backend == "jax":
        xla_temp_mb, xla_total_mb = xla_step_buffers(model, data)
    sample = {
        "maxrss_mb": maxrss / 1024,
        "step_rise_mb": (peak_after - before) / 1024
        if peak_after is not None and before is not None
        else None,
        "device_mb": device_mb,
        "device_note": device_note,
        "xla_temp_mb": xla_temp_mb,
        "xla_total_mb": xla_total_mb,
        "recorded": recorded(model, config),
    }
    print(json.dumps(sample))


def run_child(
    backend: str, config: str, jit_compile: bool, steps: int, batch: int, quick: bool, bfc: bool
) -> dict[str, Any]:
    """Runs :func:`child` in a fresh process for ``steps`` steps and returns its sample."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", config]
    command += ["--backend", backend, "--jit", "on" if jit_compile else "off"]
    command += ["--steps", str(steps), "--batch", str(batch)] + (["--quick"] if quick else [])
    env = {**os.environ, "KERAS_BACKEND": backend}
    # Large buffers from mmap, whatever was freed before: freed ones then
    # leave the resident set, which follows the live buffers of each step.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    if bfc:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    sample: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return sample


def memory_columns(backend: str) -> list[tuple[str, str]]:
    """The measured quantities of the memory table: (sample key, column title)."""
    columns = [
        ("maxrss_mb", "peak RSS MB (ru_maxrss)"),
        ("step_rise_mb", "RSS rise in steps after the first MB"),
        ("device_mb", "allocator peak MB"),
    ]
    if backend == "jax":
        columns += [
            ("xla_temp_mb", "XLA step temporaries MB"),
            ("xla_total_mb", "XLA step, all buffers MB"),
        ]
    return columns


def memory_rows(
    jit: str, samples: dict[str, list[dict[str, Any]]], model_mb: float, backend: str
) -> tuple[list[str], set[str]]:
    """Table rows (medians over repeats, extra over ``off``) and the device notes."""

    def median(config: str, key: str) -> float | None:
        values = [s[key] for s in samples[config] if s.get(key) is not None]
        return statistics.median(values) if values else None

    def extra(config: str, key: str) -> str:
        value, base = median(config, key), median("off", key)
        if value is None or base is None:
            return "n/a"
        return f"{value - base:+.0f} MB ({(value - base) / model_mb:+.2f}x)"

    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    rows: list[str] = []
    notes: set[str] = set()
    for config in CONFIGS:
        notes.update(s["device_note"] for s in samples[config])
        cells = [jit, config]
        for key, _ in memory_columns(backend):
            cells += [mb(median(config, key)), extra(config, key)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows, notes


# --- the parent ------------------------------------------------------------------


def main(argv: list[str] | None = None, printer: Callable[[str], None] = print) -> None:
    backend = _backend_from(argv)
    os.environ["KERAS_BACKEND"] = backend
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default=backend)
    parser.add_argument(
        "--jit",
        choices=["both", "off", "on"],
        default="off",
        help="TensorFlow's jit_compile settings to measure (JAX always jits); "
        "off is what Keras's default 'auto' picks on a machine without a GPU",
    )
    parser.add_argument("--steps", type=int, default=3, help="steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing)")
    parser.add_argument("--memory-repeats", type=int, default=1, help="fresh processes each")
    parser.add_argument("--tables", choices=["all", "time", "memory"], default="all")
    parser.add_argument("--quick", action="store_true", help="a tiny model: a smoke run")
    parser.add_argument(
        "--tf-cpu-bfc",
        action="store_true",
        help="TensorFlow on a CPU: run the memory processes with TF_CPU_ALLOCATOR_USE_BFC=true, "
        "whose allocator keeps the statistics get_memory_info reads",
    )
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    widths = QUICK_WIDTHS if args.quick else FULL_WIDTHS
    if args.child:
        child(args.child, widths, args.jit == "on", args.steps, args.batch)
        return
    if args.backend not in ("tensorflow", "jax"):
        parser.error(f"backend {args.backend!r}: this benchmark runs on tensorflow or jax")
    if args.quick:
        args.steps, args.rounds, args.warmup = 2, 2, 1
    # Keras is not imported here before the memory table: a child process
    # starts with its parent's ru_maxrss (Linux keeps it across exec), which
    # must stay small.
    jit_modes = (True,) if backend == "jax" else JIT_MODES[args.jit]
    params = parameter_count(widths)
    model_mb = params * 4 / MB
    printer(
        f"introspect_opt {_version('introspect-opt')}, {_versions(backend)}, "
        f"backend {backend}, {os.cpu_count()} CPUs; MLP {'-'.join(map(str, widths))}, "
        f"{params:,} parameters ({model_mb:.0f} MB of weights), Adam, batch {args.batch}; "
        f"time: {args.warmup} warm-up steps, then {args.rounds} rounds of {args.steps} steps "
        f"per configuration; memory: {args.memory_repeats} fresh process(es) per "
        f"configuration, one step then {args.warmup} more"
    )
    printer("")
    label = "jit (JAX)" if backend == "jax" else "jit_compile"
    if args.tables in ("all", "memory"):
        printer("### Peak memory (one fresh process per configuration)")
        printer("")
        columns = memory_columns(backend)
        printer(
            f"| {label} | config | "
            + " | ".join(f"{title} | extra over off" for _, title in columns)
            + " |\n|"
            + "---|" * (2 + 2 * len(columns))
        )
        all_notes: set[str] = set()
        for jit in jit_modes:
            samples: dict[str, list[dict[str, Any]]] = {config: [] for config in CONFIGS}
            for _ in range(args.memory_repeats):
                for config in CONFIGS:
                    steps = args.warmup
                    samples[config].append(
                        run_child(
                            backend, config, jit, steps, args.batch, args.quick, args.tf_cpu_bfc
                        )
                    )
            rows, notes = memory_rows(str(jit), samples, model_mb, backend)
            all_notes |= notes
            for row in rows:
                printer(row)
        printer("")
        largest_mb = max(a * b for a, b in itertools.pairwise(widths)) * 4 / MB
        printer(
            f'Model weights: {model_mb:.0f} MB (the unit of the "x" in the extra columns); '
            f"largest variable: {largest_mb:.0f} MB ({largest_mb / model_mb:.2f}x)."
        )
        for note in sorted(all_notes):
            printer(f"Allocator peak: {note}.")
        printer("")
    if args.tables in ("all", "time"):
        printer("### Step time (`model.fit`, one process, configurations interleaved)")
        printer("")
        printer(
            f"| {label} | config | median ms/step | ratio to off (median of rounds) "
            "| ratio to off, middle half | ratio to plain | CPU ms/step | CPU ratio to off "
            "| CPU ratio to off, middle half | recorded |\n"
            "|---|---|---|---|---|---|---|---|---|---|"
        )
        for jit in jit_modes:
            times, proofs = time_configs(
                widths, jit, args.steps, args.rounds, args.warmup, args.batch
            )
            for row in time_rows(str(jit), times, proofs):
                printer(row)
        printer("")


if __name__ == "__main__":
    main()
