"""Keras's own optimizer tests, run with every Keras optimizer swapped for ours.

The installed Keras wheel ships its optimizer tests
(``keras/src/optimizers/*_test.py``: golden values, configs, EMA, gradient
accumulation, loss scaling, sparse gradients, ``MultiOptimizer``, pickling).
A subprocess runs them with the pytest plugin ``upstream_keras_swap``, which
rebinds every optimizer class Keras exports to its ``introspectable()`` twin
before the test modules are imported, and reports, per test, its outcome and
which optimizers it created and applied. The tests here then require:

- every upstream test passes, but the deviations by design listed in
  ``DEVIATIONS``, which must still fail (a listed deviation that passes is
  stale and fails here);
- the swap really happened: the upstream modules hold our classes, every
  upstream file created and applied our optimizers, no test applied an update
  with a plain Keras optimizer, and a canary test that does apply one is
  caught.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import keras
import keras.src.optimizers
import pytest

BACKEND = keras.backend.backend()
UPSTREAM_DIR = Path(keras.src.optimizers.__file__).parent
UPSTREAM_FILES = sorted(UPSTREAM_DIR.glob("*_test.py"))

ALL_BACKENDS = frozenset({"tensorflow", "jax", "torch"})

# Upstream tests that fail by design with our classes, on the backends named:
# node id -> (backends, why).
DEVIATIONS: dict[str, tuple[frozenset[str], str]] = {
    "multi_optimizer_test.py::MultiOptimizerTest::test_serialization": (
        ALL_BACKENDS,
        "asserts the deserialized optimizers' class names are 'Adam', 'SGD' and "
        "'RMSprop'; ours come back as IntrospectableAdam etc. (registered classes, so "
        "that load_model gives back the introspectable optimizer)",
    ),
    "sgd_test.py::SGDTest::test_single_step": (
        frozenset({"jax"}),
        "asserts len(optimizer.variables) == 2 after build; on JAX ours also lists its "
        "2 state variables there, the only way stateless_apply (fit) carries them",
    ),
}

# Upstream tests not run, for time: node id prefix -> (backends, why).
NOT_RUN: dict[str, tuple[frozenset[str], str]] = {
    "optimizer_test.py::OptimizerTest::test_gradient_accumulation_with_weigth_decay": (
        frozenset({"jax"}),
        "11 cases of 32 eager steps, each retracing JAX's accumulation branch: 7 s of "
        "CPU per case; they run on TensorFlow and torch, and accumulation runs on JAX "
        "in test_gradient_accumulation and test_overwrite_with_gradient_with_...",
    ),
}

# A test module run beside the upstream ones: it checks the swap from inside a
# test, and applies one update with Keras's own SGD, which the leak check
# below must catch (so that check is known to work).
CANARY = """
import keras
from keras.src import optimizers
from keras.src.optimizers.adam import Adam
from keras.src.optimizers.lamb import Lamb

import introspect_opt


def test_every_way_to_name_a_keras_optimizer_gives_ours():
    assert Adam is introspect_opt.IntrospectableAdam
    assert Lamb is introspect_opt.IntrospectableLamb
    assert optimizers.SGD is introspect_opt.IntrospectableSGD
    assert keras.optimizers.Muon is introspect_opt.IntrospectableMuon
    assert type(optimizers.get("rmsprop")) is introspect_opt.IntrospectableRMSprop
    config = {"module": "keras.optimizers", "class_name": "Nadam", "config": {},
              "registered_name": None}
    assert type(optimizers.deserialize(config)) is introspect_opt.IntrospectableNadam


def test_an_update_by_a_plain_keras_optimizer_is_seen():
    plain = introspect_opt.IntrospectableSGD._introspect_base(0.1, name="canary_plain")
    assert not isinstance(plain, introspect_opt.IntrospectableOptimizer)
    variable = keras.Variable([1.0])
    plain.apply([keras.ops.ones((1,))], [variable])
"""
CANARY_SWAP = "canary_test.py::test_every_way_to_name_a_keras_optimizer_gives_ours"
CANARY_LEAK = "canary_test.py::test_an_update_by_a_plain_keras_optimizer_is_seen"

# The one plain optimizer the library itself creates: the probe that learns an
# optimizer's slot layout for the file manifest (never applied).
LAYOUT_PROBE = "introspect_opt_layout_probe"

DOCS = Path(__file__).resolve().parents[1] / "docs" / "support.md"

# Each test that reads the run's report is slow (the run: 15-55 s of CPU).
slow = pytest.mark.slow
pytestmark = [
    pytest.mark.extended,  # .ci/run: `pytest -m extended`
    pytest.mark.skipif(not UPSTREAM_FILES, reason=f"no *_test.py files in {UPSTREAM_DIR}"),
]


def _applies(backends: frozenset[str]) -> bool:
    return BACKEND in backends


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs the upstream tests with the swap, once per module; returns the plugin's report."""
    work = tmp_path_factory.mktemp("upstream_keras")
    (work / "canary_test.py").write_text(CANARY, encoding="utf-8")
    report_path = work / "report.json"
    env = dict(os.environ)
    env["INTROSPECT_OPT_UPSTREAM_REPORT"] = str(report_path)
    env["KERAS_BACKEND"] = BACKEND
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    here = str(Path(__file__).parent)  # for `-p upstream_keras_swap`
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    deselect = [
        arg
        for prefix, (backends, _) in NOT_RUN.items()
        if _applies(backends)
        for arg in ("--deselect", prefix)
    ]
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        os.devnull,  # none of this project's pytest settings (-n 2, markers)
        "--rootdir",
        str(UPSTREAM_DIR),  # node ids (for --deselect) as "sgd_test.py::SGDTest::test_config"
        "-p",
        "upstream_keras_swap",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "-q",
        "--tb=short",
        "-W",
        "ignore::DeprecationWarning",
        *deselect,
        *map(str, UPSTREAM_FILES),
        str(work / "canary_test.py"),
    ]
    done = subprocess.run(
        command, cwd=work, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    output = (done.stdout + done.stderr)[-6000:]
    assert done.returncode in (0, 1), f"pytest exited {done.returncode}:\n{output}"
    report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
    report["output"] = output
    return report


def _upstream_tests(upstream: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: r for n, r in upstream["tests"].items() if not n.startswith("canary_test.py")}


@slow
def test_keras_tests_pass_with_our_classes_but_the_listed_deviations(
    upstream: dict[str, Any],
) -> None:
    """Every upstream test that fails is a deviation listed for this backend."""
    assert not upstream["collection_errors"], upstream["collection_errors"]
    tests = _upstream_tests(upstream)
    unexpected = {
        node: result["message"]
        for node, result in tests.items()
        if result["outcome"] == "failed"
        and not (node in DEVIATIONS and _applies(DEVIATIONS[node][0]))
    }
    assert not unexpected, "\n\n".join(f"{n}:\n{m}" for n, m in unexpected.items())
    outcomes = Counter(result["outcome"] for result in tests.values())
    # All files ran: a collection problem cannot pass as a short run.
    assert {node.split("::")[0] for node in tests} == {f.name for f in UPSTREAM_FILES}
    assert outcomes["passed"] >= 180, outcomes


@slow
def test_listed_deviations_still_fail(upstream: dict[str, Any]) -> None:
    """A listed deviation that runs on this backend and passes is stale."""
    tests = _upstream_tests(upstream)
    for node, (backends, _) in DEVIATIONS.items():
        assert node in tests, f"{node} is listed in DEVIATIONS but Keras no longer has it"
        if _applies(backends) and tests[node]["outcome"] != "skipped":
            assert tests[node]["outcome"] == "failed", f"{node} now passes: remove it"
    for prefix, (backends, _) in NOT_RUN.items():
        ran = any(node.startswith(prefix) for node in tests)
        assert ran != _applies(backends), f"{prefix}: NOT_RUN is stale"


@slow
def test_the_swap_reached_every_upstream_test(upstream: dict[str, Any]) -> None:
    """The upstream tests created and applied our classes, never a plain Keras optimizer."""
    rebound = set(upstream["rebound"])
    for name in ("SGD", "Adam", "Lamb"):
        module = f"keras.src.optimizers.{name.lower()}.{name}"
        assert {f"keras.optimizers.{name}", module} <= rebound, name
    tests = _upstream_tests(upstream)
    per_file: dict[str, Counter[str]] = {}
    for node, result in tests.items():
        events = result["events"]
        per_file.setdefault(node.split("::")[0], Counter()).update(events)
        plain = {
            event: count
            for event, count in events.items()
            if ":plain" in event and not event.endswith(LAYOUT_PROBE)
        }
        assert not plain, f"{node} used Keras's own optimizers: {plain}"
        assert not events.get(f"applied:plain:{LAYOUT_PROBE}"), node
    ran = {node.split("::")[0] for node, r in tests.items() if r["outcome"] != "skipped"}
    for file in sorted(ran):
        assert per_file[file]["created:twin"] > 0, f"{file} created none of our optimizers"
        assert per_file[file]["applied:twin"] > 0, f"{file} applied none of our optimizers"


@slow
def test_the_canary_shows_the_checks_can_fail(upstream: dict[str, Any]) -> None:
    """The canary saw our classes under every name, and its plain Keras update was counted."""
    canary_swap = upstream["tests"][CANARY_SWAP]
    assert canary_swap["outcome"] == "passed", canary_swap["message"]
    canary_leak = upstream["tests"][CANARY_LEAK]
    assert canary_leak["outcome"] == "passed", canary_leak["message"]
    assert canary_leak["events"].get("applied:plain:SGD:canary_plain") == 1, canary_leak


def test_the_docs_list_the_deviations() -> None:
    """docs/support.md names every deviation and what is left out, and nothing else."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Keras's own tests, with our classes")[1].split("\n## ")[0]
    named = set(re.findall(r"`(\w+_test\.py::[\w:]+)`", section))
    assert named == set(DEVIATIONS) | set(NOT_RUN)
