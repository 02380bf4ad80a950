"""The diagnostics-cost benchmark is a real script: run it as users would (a smoke run)."""

from __future__ import annotations

import pytest
from helpers import run_benchmark_quick

CONFIGS = ("plain", "off", "global", "per_variable")

# Run on the TensorFlow backend, like the other benchmarks' smoke runs
# (tests/test_benchmarks.py); the script's --backend jax is run by hand.
pytestmark = [pytest.mark.tf_only, pytest.mark.extended]  # .ci/run: `pytest -m extended`


def _rows(lines: list[str], title: str) -> dict[str, list[str]]:
    """The table under ``title``: its rows' cells, keyed by the configuration column."""
    start = lines.index(title)
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if line.startswith("### "):
            break
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[1]] = cells
    return rows


@pytest.mark.slow
def test_per_variable_benchmark_runs_and_prints_ratios() -> None:
    """``--quick`` prints a time ratio and a memory peak for every configuration."""
    stdout = run_benchmark_quick("per_variable.py")
    lines = stdout.splitlines()
    assert "backend tensorflow" in lines[0]

    times = _rows(lines, "### Step time (`model.fit`, one process, configurations interleaved)")
    assert set(times) == {"config", *CONFIGS}, times
    for config in CONFIGS:
        cells = times[config]
        assert cells[0] == "False"  # jit_compile: the default, "auto" on a CPU
        ratio_to_off, ratio_to_plain, cpu_ratio = cells[3], cells[5], cells[7]
        for ratio in (ratio_to_off, ratio_to_plain, cpu_ratio):
            assert ratio.endswith("x") and float(ratio[:-1]) > 0, cells
    assert times["off"][3] == "1.000x"
    assert times["plain"][5] == "1.000x"
    # Each diagnostics configuration proves that it recorded.
    assert times["global"][-1].startswith("gradient_norm ")
    assert "8 of 8 variables recorded" in times["per_variable"][-1]
    assert times["off"][-1] == "-"

    memory = _rows(lines, "### Peak memory (one fresh process per configuration)")
    assert set(memory) == {"config", *CONFIGS}, memory
    for config in CONFIGS:
        peak_rss, extra = memory[config][2], memory[config][3]
        assert float(peak_rss) > 0, memory[config]
        assert extra.endswith("x)") and " MB (" in extra, memory[config]
    assert memory["off"][3] == "+0 MB (+0.00x)"
    # On a CPU TensorFlow keeps no allocator statistics: the output says so.
    assert "Allocator peak: get_memory_info('CPU:0') raised ValueError" in stdout
