"""The save/load benchmark is a real script: run it as users would (a smoke run)."""

from __future__ import annotations

import pytest
from helpers import run_benchmark_quick

# The benchmark, like the overhead one (tests/test_examples.py), is written for
# the TensorFlow backend.
pytestmark = [pytest.mark.tf_only, pytest.mark.extended]  # .ci/run: `pytest -m extended`


@pytest.mark.slow
def test_persistence_benchmark_runs_and_prints_ratios() -> None:
    """``--quick`` times every operation warm and one first load in fresh processes."""
    stdout = run_benchmark_quick("persistence.py")
    lines = stdout.splitlines()
    for title in ("### Warm (repeated in one process)", "### First load in a fresh process"):
        assert title in lines
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    for operation in (
        "save_weights (.weights.h5)",
        "save (.keras)",
        "load_weights (.weights.h5)",
        "load_model (.keras)",
    ):
        # Every row has numbers in it: times, a ratio ("1.03x"), memory peaks.
        assert operation in rows
        assert rows[operation].count("x |") == 2, rows[operation]
    assert "Import time in the fresh processes" in stdout
