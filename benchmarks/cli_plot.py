"""Wall time of ``introspect-opt plot CONFIG.json -o out.png``, as a user runs it.

Each run is a fresh process of the installed console script (the one beside
this Python), so the time includes Python's start-up and every import:

* ``schedule config``: a ``CosineDecay`` with warmup, as
  ``keras.optimizers.schedules.serialize`` writes it. The command line
  evaluates it in NumPy and imports neither Keras nor a backend;
* ``optimizer config``: the same schedule inside an ``SGD`` config, which
  Keras builds (TensorFlow's start-up included): what every config cost
  before the NumPy path, and what the CLI still pays for a ``.keras`` file, an
  optimizer config or a custom schedule class.

Runs alternate between the two, so slow drifts of the machine hit both; the
table gives the median, min and max of ``--repeats`` runs each, and the ratio
of the medians.

Run: ``python benchmarks/cli_plot.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What keras.optimizers.schedules.serialize(CosineDecay(0.0, 900,
# warmup_target=0.1, warmup_steps=100)) returns in Keras 3.15, written out so
# that the benchmark itself imports no Keras.
SCHEDULE = {
    "module": "keras.optimizers.schedules",
    "class_name": "CosineDecay",
    "config": {
        "initial_learning_rate": 0.0,
        "decay_steps": 900,
        "alpha": 0.0,
        "name": "CosineDecay",
        "warmup_target": 0.1,
        "warmup_steps": 100,
    },
    "registered_name": None,
}
OPTIMIZER = {
    "module": "keras.optimizers",
    "class_name": "SGD",
    "config": {"name": "SGD", "learning_rate": SCHEDULE, "momentum": 0.9},
    "registered_name": None,
}


def time_run(script: Path, config: Path, out: Path) -> float:
    """Seconds of one ``introspect-opt plot CONFIG -o OUT`` in a fresh process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    done = subprocess.run(
        [str(script), "plot", str(config), "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"{config.name}: exit status {done.returncode}\n{done.stderr[-2000:]}")
    out.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each (default 5)")
    args = parser.parse_args()
    script = Path(sys.executable).parent / "introspect-opt"
    if not script.is_file():
        raise SystemExit(f"no console script at {script}: pip install -e . first")
    with tempfile.TemporaryDirectory() as folder:
        cases = {}
        for name, config in (("schedule config", SCHEDULE), ("optimizer config", OPTIMIZER)):
            path = Path(folder) / f"{name.split()[0]}.json"
            path.write_text(json.dumps(config))
            cases[name] = path
        times: dict[str, list[float]] = {name: [] for name in cases}
        out = Path(folder) / "lr.png"
        for _ in range(args.repeats):
            for name, path in cases.items():
                times[name].append(time_run(script, path, out))
    print(f"introspect-opt plot CONFIG.json -o lr.png, {args.repeats} fresh processes each")
    print(f"({os.cpu_count()} CPUs, Python {sys.version.split()[0]})\n")
    print("| config | median s | min s | max s |")
    print("| --- | --- | --- | --- |")
    for name, seconds in times.items():
        print(
            f"| {name} | {statistics.median(seconds):.2f} | {min(seconds):.2f} "
            f"| {max(seconds):.2f} |"
        )
    ratio = statistics.median(times["optimizer config"]) / statistics.median(
        times["schedule config"]
    )
    print(f"\nThe Keras path takes {ratio:.1f}x as long as the NumPy path.")


if __name__ == "__main__":
    main()
