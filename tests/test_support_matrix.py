"""docs/support.md lists exactly the optimizers the installed Keras has."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
from helpers import KERAS_OPTIMIZERS
from packaging.requirements import Requirement

import introspect_opt

ROOT = Path(__file__).resolve().parents[1]


def test_matrix_rows_match_installed_keras_and_exports() -> None:
    """One fully tested row per Keras optimizer class, each exported by the package."""
    text = (ROOT / "docs" / "support.md").read_text()
    rows = re.findall(r"^\| `Introspectable(\w+)` \| (.+) \|$", text, re.MULTILINE)
    documented = {name: cells for name, cells in rows}
    assert set(documented) == set(KERAS_OPTIMIZERS)
    for name, cells in documented.items():
        assert [c.strip() for c in cells.split("|")] == ["tested"] * 3, name
        assert f"Introspectable{name}" in introspect_opt.__all__


def _lower_bound(requirements: list[str], name: str) -> str:
    """The ``>=`` bound of ``name`` among requirement strings."""
    for text in requirements:
        requirement = Requirement(text)
        if requirement.name == name:
            return next(s.version for s in requirement.specifier if s.operator in (">=", "=="))
    raise AssertionError(f"{name} is not required")


def test_versions_table_matches_pyproject() -> None:
    """The oldest versions in the docs are pyproject's lower bounds and tox's oldest env."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    oldest = tox["testenv:oldest"]["deps"].split()
    text = (ROOT / "docs" / "support.md").read_text()
    for package, label in (("keras", "Keras"), ("tensorflow", "TensorFlow")):
        bound = _lower_bound(dependencies, package)
        pinned = _lower_bound(oldest, package)
        assert pinned.startswith(bound), (package, bound, pinned)
        assert f"| {label} | {pinned} |" in text, label
