"""docs/support.md lists exactly the optimizers the installed Keras has."""

from __future__ import annotations

import re
from pathlib import Path

import keras

import introspect_opt

ROOT = Path(__file__).resolve().parents[1]
WRAPPERS = {"Optimizer", "LossScaleOptimizer", "MultiOptimizer"}


def test_matrix_rows_match_installed_keras_and_exports() -> None:
    """One fully tested row per Keras optimizer class, each exported by the package."""
    text = (ROOT / "docs" / "support.md").read_text()
    rows = re.findall(r"^\| `Introspectable(\w+)` \| (.+) \|$", text, re.MULTILINE)
    documented = {name: cells for name, cells in rows}
    installed = {
        name
        for name, obj in vars(keras.optimizers).items()
        if isinstance(obj, type)
        and issubclass(obj, keras.optimizers.Optimizer)
        and name not in WRAPPERS
    }
    assert set(documented) == installed
    for name, cells in documented.items():
        assert [c.strip() for c in cells.split("|")] == ["tested"] * 3, name
        assert f"Introspectable{name}" in introspect_opt.__all__


def test_versions_table_matches_pyproject() -> None:
    """The oldest versions in the docs are the lower bounds pyproject.toml states."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "docs" / "support.md").read_text()
    assert '"keras>=3.15,<4"' in pyproject and "| Keras | 3.15.0 |" in text
    assert '"tensorflow>=2.20"' in pyproject and "| TensorFlow | 2.20.0 |" in text
    tox = (ROOT / "tox.ini").read_text()
    assert "tensorflow==2.20.0" in tox and "keras==3.15.0" in tox
