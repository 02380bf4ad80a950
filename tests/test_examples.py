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


SCRIPTS = ["quickstart.py", "rate_at_step.py", "fit_callback.py", "custom_loop.py"]
# Each example in turn, as `python examples/<name>` would run it, in one process
# (TensorFlow starts once, not five times); a line of its own separates them.
_RUNNER = """
import runpy, sys, keras
for script in sys.argv[1:]:
    print(f"=== {script}", flush=True)
    keras.backend.clear_session()
    sys.argv = [script]  # as `python <script>` sees it: no arguments
    runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What each example printed, by file name; the plotting ones write into a fresh folder."""
    cwd = tmp_path_factory.mktemp("examples")
    scripts = [*SCRIPTS, "schedule_preview.py", "per_layer_diagnostics.py"]
    paths = [str(ROOT / "examples" / name) for name in scripts]
    out = _run("-c", _RUNNER, *paths, cwd=cwd)
    sections = out.split("=== ")[1:]
    printed = {}
    for section in sections:
        path, _, text = section.partition("\n")
        printed[Path(path).name] = text
    printed["cwd"] = str(cwd)
    return printed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("quickstart.py", "saved and reloaded as IntrospectableSGD: applied rate"),
        ("rate_at_step.py", "applied (restored)"),
        ("fit_callback.py", "epoch 2: applied_lr="),
        ("custom_loop.py", "step 8: loss="),
    ],
)
def test_example_runs(outputs: dict[str, str], script: str, expected: str) -> None:
    """Each example runs to completion (they assert their own claims)."""
    assert expected in outputs[script]


@pytest.mark.slow
def test_schedule_preview_writes_the_plot_it_names(outputs: dict[str, str]) -> None:
    """Without an argument, the preview writes schedule_preview.png in the current folder."""
    out = outputs["schedule_preview.py"]
    cwd = Path(outputs["cwd"])
    assert "applied equals the preview" in out
    written = out.strip().splitlines()[-1]
    assert written == f"plot written to {cwd.resolve() / 'schedule_preview.png'}"
    assert (cwd / "schedule_preview.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_per_layer_diagnostics_writes_the_docs_picture(outputs: dict[str, str]) -> None:
    """Without arguments it writes docs/img/per_layer_update_ratio.png under the current folder.

    Run from the repository root, that is the picture of
    docs/what-is-my-optimizer-doing.md; here it goes to a temporary folder.
    """
    out = outputs["per_layer_diagnostics.py"]
    png = Path(outputs["cwd"]) / "docs" / "img" / "per_layer_update_ratio.png"
    assert "64 updates on tensorflow" in out
    assert "mnist_like/classifier/kernel" in out
    assert "updates outside the band over the run, per variable:" in out
    assert out.strip().splitlines()[-1] == f"plot written to {png.resolve()}"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (825, 462)  # 7.5 x 4.2 inches at 110 dpi
    assert 20_000 < len(data) < 500_000  # a drawn plot, not an empty canvas


def test_examples_are_all_tested() -> None:
    """A new example without a test above fails here."""
    scripts = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert scripts == {
        "quickstart.py",
        "rate_at_step.py",
        "fit_callback.py",
        "custom_loop.py",
        "schedule_preview.py",
        "per_layer_diagnostics.py",
    }


@pytest.mark.slow
def test_benchmark_runs_and_prints_ratios() -> None:
    """The overhead benchmark still runs (a few steps, two rounds, without XLA)."""
    out = _run(
        str(ROOT / "benchmarks" / "overhead.py"), "--steps", "3", "--rounds", "2", "--jit", "off"
    )
    assert "| False | introspectable |" in out
    assert "| False | sgd+schedule-callback |" in out
    assert "All steps in one `tf.function` call" in out
