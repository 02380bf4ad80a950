"""The examples and the benchmark are real scripts: run them as users would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The examples and the benchmark are written for the TensorFlow backend.
pytestmark = pytest.mark.tf_only


def _run(*args: str, cwd: Path = ROOT) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("quickstart.py", "saved and reloaded as IntrospectableSGD: applied rate"),
        ("rate_at_step.py", "applied (restored)"),
        ("fit_callback.py", "epoch 2: applied_lr="),
        ("custom_loop.py", "step 8: loss="),
    ],
)
def test_example_runs(script: str, expected: str) -> None:
    """Each example runs to completion (they assert their own claims)."""
    assert expected in _run(str(ROOT / "examples" / script))


def test_schedule_preview_writes_the_plot_it_names(tmp_path: Path) -> None:
    """Without an argument, the preview writes schedule_preview.png in the current folder."""
    out = _run(str(ROOT / "examples" / "schedule_preview.py"), cwd=tmp_path)
    assert "applied equals the preview" in out
    written = out.strip().splitlines()[-1]
    assert written == f"plot written to {tmp_path.resolve() / 'schedule_preview.png'}"
    assert (tmp_path / "schedule_preview.png").read_bytes()[:4] == b"\x89PNG"


def test_examples_are_all_tested() -> None:
    """A new example without a test above fails here."""
    scripts = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert scripts == {
        "quickstart.py",
        "rate_at_step.py",
        "fit_callback.py",
        "custom_loop.py",
        "schedule_preview.py",
    }


def test_benchmark_runs_and_prints_ratios() -> None:
    """The overhead benchmark still runs (a few steps, two rounds)."""
    out = _run(str(ROOT / "benchmarks" / "overhead.py"), "--steps", "3", "--rounds", "2")
    assert "| True | introspectable |" in out
    assert "| False | sgd+schedule-callback |" in out
    assert "All steps in one `tf.function` call" in out
