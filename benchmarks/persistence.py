"""Save and load time of IntrospectableAdam against plain keras.optimizers.Adam.

Both optimizers train the same model (six square ``Dense`` layers, about
``--params`` parameters, so Adam holds two slots of the same size) for one
step, so that every slot exists, and are then saved and loaded side by side:

* ``save_weights`` (``.weights.h5``), ``save`` (``.keras``), ``load_weights``
  (into the trained model) and ``keras.models.load_model``, each repeated
  ``--repeats`` times in this process, plain and ours alternating; the table
  gives the median times and their ratio (the warm numbers: every import done,
  every function traced);
* the first ``load_weights`` / ``load_model`` in a fresh process (a subprocess
  per measurement, ``--fresh-repeats`` of each, plain and ours alternating):
  what a user restarting a job pays. ``load_weights`` goes into a compiled
  model whose optimizer is built (``optimizer.build(model.trainable_variables)``,
  which plain Keras needs: it skips the optimizer's state, with a warning only,
  when the optimizer is not built). The row "optimizer not built" times what
  each needs to restore everything into a compiled model that has not
  trained: plain Keras ``optimizer.build`` then ``load_weights``; ours
  ``load_weights``, then ``optimizer.build`` if the load left the slots
  waiting for it (what the first training step would do).

Times are wall-clock medians; "CPU s" are the medians of the process's CPU
time over the same calls (every thread), steadier than wall time where other
jobs share the machine. Import time (printed below the tables) is not in the
fresh-process times.

Memory: "peak RSS" is how far the process's resident set rose above its size
just before the operation (Linux: the high-water mark is reset through
``/proc/self/clear_refs`` first; elsewhere ``ru_maxrss``, which cannot be
reset, so it reads 0 once an earlier step went higher). "tracemalloc" is the
peak of Python and NumPy allocations during the operation (TensorFlow's
tensors are not counted), measured in a separate run of the operation so that
tracing does not slow the timed one. The target for loads is no more than one
extra copy of the optimizer's state (its size is printed in the header).

Run: ``python benchmarks/persistence.py [--params 25000000] [--repeats 5]
[--fresh-repeats 3] [--fresh OPERATION ...] [--quick] [--profile]``; ``--quick``
(a 60,600-parameter model, two warm repeats, one fresh ``load_weights`` each)
is a smoke run.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import json
import math
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _memory import reset_peak_rss, status_kb  # benchmarks/, first on sys.path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

LAYERS = 6
VARIANTS = ("plain", "ours")
MB = 1024 * 1024


# --- memory -----------------------------------------------------------------


def _maxrss_kb() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


Sample = dict[str, float]


def measure(operation: Callable[[], Any], collect: bool = True) -> Sample:
    """Wall and CPU seconds of ``operation``, and the MB the resident set rose above its start.

    CPU seconds count every thread of this process (TensorFlow's too); on a
    machine other jobs share they are steadier than the wall time.
    """
    if collect:
        gc.collect()
    resettable = reset_peak_rss()
    before = status_kb("VmRSS") if resettable else None
    before_max = _maxrss_kb()
    start, start_cpu = time.perf_counter(), time.process_time()
    operation()
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    peak = status_kb("VmHWM") if resettable else None
    if before is not None and peak is not None:
        rss = max(0, peak - before) / 1024
    else:
        rss = max(0, _maxrss_kb() - before_max) / 1024
    return {"seconds": seconds, "cpu": cpu, "rss_mb": rss}


def traced_peak(operation: Callable[[], Any]) -> float:
    """Peak MB of Python and NumPy allocations while ``operation`` runs."""
    gc.collect()
    tracemalloc.start()
    try:
        operation()
        return tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


# --- the model ------------------------------------------------------------------


def width_for(params: int) -> int:
    """The width of ``LAYERS`` square Dense layers holding about ``params`` parameters."""
    return max(4, round(math.sqrt(params / LAYERS)))


def make_model(params: int, variant: str, build_optimizer: bool) -> Any:
    """A compiled model of ``LAYERS`` square Dense layers with the variant's Adam."""
    import keras

    width = width_for(params)
    model = keras.Sequential(
        [keras.Input((width,))] + [keras.layers.Dense(width) for _ in range(LAYERS)]
    )
    if variant == "ours":
        from introspect_opt import IntrospectableAdam

        optimizer: Any = IntrospectableAdam(1e-3)
    else:
        optimizer = keras.optimizers.Adam(1e-3)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    if build_optimizer:
        model.optimizer.build(model.trainable_variables)
    return model


def train_one_step(model: Any) -> None:
    import numpy as np

    width = model.input_shape[-1]
    data = np.random.default_rng(0).standard_normal((8, width)).astype("float32")
    model.train_on_batch(data, data)


# --- one fresh-process measurement (the child) ----------------------------------


def child(operation: str, variant: str, path: str, params: int, profile: bool) -> None:
    """Times the first load in this process and prints one JSON line."""
    start = time.perf_counter()
    import keras

    keras_import = time.perf_counter() - start
    ours_import = 0.0
    if variant == "ours":
        start = time.perf_counter()
        import introspect_opt  # noqa: F401 - registers the class a .keras file names

        ours_import = time.perf_counter() - start
    model: Any = None
    if operation == "load_weights":
        model = make_model(params, variant, build_optimizer=True)

        def first() -> Any:
            return model.load_weights(path)
    elif operation == "load_weights_unbuilt":
        model = make_model(params, variant, build_optimizer=False)

        def first() -> Any:
            # Plain Keras skips the state of an unbuilt optimizer (with a
            # warning): building it first is part of what restoring costs.
            # Ours may queue the slots until build (as the first training
            # step would run it): built here, so both end with every
            # variable restored.
            if variant == "plain":
                model.optimizer.build(model.trainable_variables)
            model.load_weights(path)
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
    else:

        def first() -> Any:
            return keras.models.load_model(path)

    gc.collect()  # here, not in the profile (a full collection takes tenths of a second)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    sample = measure(first, collect=False)
    if profiler is not None:
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(15)
    if model is not None and not model.optimizer.built:
        raise SystemExit(f"{operation}: the optimizer was not restored")
    # A second load with allocation tracing: what the load itself allocates.
    if operation == "load_model":
        traced = traced_peak(lambda: keras.models.load_model(path))
    else:
        traced = traced_peak(lambda: model.load_weights(path))
    sample.update(traced_mb=traced, keras_import=keras_import, ours_import=ours_import)
    print(json.dumps(sample))


def run_child(
    operation: str, variant: str, path: Path, params: int, profile: bool = False
) -> Sample:
    """Runs one fresh-process measurement (:func:`child`) and returns its sample."""
    command = [sys.executable, __file__, "--child", operation, variant, str(path)]
    command += ["--params", str(params)] + (["--profile"] if profile else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    if profile:
        print(done.stderr, file=sys.stderr)
    sample: Sample = json.loads(done.stdout.strip().splitlines()[-1])
    return sample


# --- the parent -----------------------------------------------------------------


def _revision(folder: Path) -> str:
    """The git revision of the package measured (``-dirty``: with uncommitted changes)."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "not a git checkout"


# An operation's name and its samples, by variant.
Row = tuple[str, dict[str, list[Sample]]]


def print_table(printer: Callable[[str], None], title: str, rows: list[Row]) -> None:
    """Medians of times, ratios ours/plain, and the largest memory peaks."""
    printer(f"### {title}")
    printer("")
    printer(
        "| operation | plain s | ours s | ratio | CPU s plain / ours | CPU ratio "
        "| peak RSS MB plain / ours | tracemalloc MB plain / ours |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for name, samples in rows:

        def median(variant: str, key: str, samples: dict[str, list[Sample]] = samples) -> float:
            return statistics.median(s[key] for s in samples[variant])

        def peak(variant: str, key: str, samples: dict[str, list[Sample]] = samples) -> float:
            return max(s[key] for s in samples[variant])

        wall, cpu = [median(v, "seconds") for v in VARIANTS], [median(v, "cpu") for v in VARIANTS]
        printer(
            f"| {name} | {wall[0]:.3f} | {wall[1]:.3f} | {wall[1] / wall[0]:.2f}x "
            f"| {cpu[0]:.3f} / {cpu[1]:.3f} | {cpu[1] / cpu[0]:.2f}x "
            f"| {peak('plain', 'rss_mb'):.0f} / {peak('ours', 'rss_mb'):.0f} "
            f"| {peak('plain', 'traced_mb'):.0f} / {peak('ours', 'traced_mb'):.0f} |"
        )
    printer("")


def warm(models: dict[str, Any], folder: Path, repeats: int) -> list[Row]:
    """Every operation repeated in this process, plain and ours alternating."""
    import keras

    def path(variant: str, suffix: str) -> str:
        return str(folder / f"warm-{variant}{suffix}")

    operations: dict[str, Callable[[str], Any]] = {
        "save_weights (.weights.h5)": lambda v: models[v].save_weights(path(v, ".weights.h5")),
        "save (.keras)": lambda v: models[v].save(path(v, ".keras")),
        "load_weights (.weights.h5)": lambda v: models[v].load_weights(path(v, ".weights.h5")),
        "load_model (.keras)": lambda v: keras.models.load_model(path(v, ".keras")),
    }
    rows: list[Row] = []
    for name, operation in operations.items():
        samples: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
        for repeat in range(repeats):
            # Alternate which goes first, so neither always finds a warmer cache.
            for variant in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
                samples[variant].append(measure(functools.partial(operation, variant)))
        for variant in VARIANTS:
            traced = traced_peak(functools.partial(operation, variant))
            samples[variant][0]["traced_mb"] = traced
            for sample in samples[variant][1:]:
                sample["traced_mb"] = traced
        rows.append((name, samples))
    return rows


FRESH = {
    "load_weights": ("load_weights (.weights.h5)", ".weights.h5"),
    "load_weights_unbuilt": ("load_weights, optimizer not built", ".weights.h5"),
    "load_model": ("load_model (.keras)", ".keras"),
}


def fresh(
    files: dict[str, dict[str, Path]], params: int, repeats: int, chosen: list[str]
) -> tuple[list[Row], dict[str, list[float]]]:
    """The first load in a fresh process, one subprocess per measurement."""
    operations = {FRESH[op][0]: (op, FRESH[op][1]) for op in chosen}
    imports: dict[str, list[float]] = {"keras": [], "introspect_opt": []}
    rows: list[Row] = []
    for name, (operation, suffix) in operations.items():
        samples: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
        for repeat in range(repeats):
            for variant in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
                sample = run_child(operation, variant, files[variant][suffix], params)
                samples[variant].append(sample)
                imports["keras"].append(sample["keras_import"])
                if variant == "ours":
                    imports["introspect_opt"].append(sample["ours_import"])
        rows.append((name, samples))
    return rows, imports


def _print(line: str) -> None:
    print(line, flush=True)  # each table as it is done: a full run takes minutes


def main(argv: list[str] | None = None, printer: Callable[[str], None] = _print) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", type=int, default=25_000_000)
    parser.add_argument("--repeats", type=int, default=5, help="warm repeats (median)")
    parser.add_argument(
        "--fresh-repeats", type=int, default=3, help="fresh processes per operation and variant"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small model, two repeats: a smoke run"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print cProfile of ours' first load in a fresh process (to stderr)",
    )
    parser.add_argument(
        "--fresh",
        nargs="*",
        choices=list(FRESH),
        default=None,
        help="the fresh-process loads to time (default: all; --quick: load_weights only)",
    )
    parser.add_argument("--child", nargs=3, metavar=("OPERATION", "VARIANT", "PATH"))
    args = parser.parse_args(argv)
    if args.child:
        operation, variant, path = args.child
        child(operation, variant, path, params=args.params, profile=args.profile)
        return
    if args.quick:
        args.params, args.repeats, args.fresh_repeats = 60_000, 2, 1
    if args.fresh is None:
        args.fresh = ["load_weights"] if args.quick else list(FRESH)

    import keras
    import tensorflow as tf

    import introspect_opt

    package = Path(introspect_opt.__file__).resolve().parent
    width = width_for(args.params)
    params = LAYERS * (width * width + width)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        models: dict[str, Any] = {}
        files: dict[str, dict[str, Path]] = {}
        for variant in VARIANTS:
            keras.utils.set_random_seed(0)
            models[variant] = make_model(args.params, variant, build_optimizer=False)
            train_one_step(models[variant])
            files[variant] = {
                suffix: folder / f"{variant}{suffix}" for suffix in (".weights.h5", ".keras")
            }
            models[variant].save_weights(files[variant][".weights.h5"])
            models[variant].save(files[variant][".keras"])
        state_mb = sum(v.numpy().nbytes for v in models["plain"].optimizer.variables) / MB
        size_mb = files["plain"][".keras"].stat().st_size / MB
        printer(
            f"introspect_opt {introspect_opt.__version__} ({_revision(package)}, "
            f"{package}), "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; "
            f"{LAYERS} Dense layers of {width}, {params:,} parameters, Adam state "
            f"{state_mb:.0f} MB, .keras file {size_mb:.0f} MB; warm: median of "
            f"{args.repeats}, fresh: median of {args.fresh_repeats} processes"
        )
        printer("")
        print_table(printer, "Warm (repeated in one process)", warm(models, folder, args.repeats))
        del models
        gc.collect()
        if not args.fresh:
            return
        rows, imports = fresh(files, args.params, args.fresh_repeats, args.fresh)
        print_table(printer, "First load in a fresh process", rows)
        printer(
            f"Import time in the fresh processes (median): keras "
            f"{statistics.median(imports['keras']):.2f} s, introspect_opt after keras "
            f"{statistics.median(imports['introspect_opt']):.3f} s (not in the times above)."
        )
        if args.profile:
            for operation in args.fresh:
                print(f"===== cProfile: ours, first {operation}", file=sys.stderr)
                suffix = FRESH[operation][1]
                run_child(operation, "ours", files["ours"][suffix], args.params, profile=True)


if __name__ == "__main__":
    main()
