"""Type checkers and editors know what introspectable optimizers add."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "typing" / "user_script.py"

# As for an installed package: errors inside introspect_opt are not the user's.
CONFIG = f"""
[mypy]
strict = True
mypy_path = {ROOT}
[mypy-introspect_opt.*]
ignore_errors = True
[mypy-keras.*,tensorflow.*,tf_keras.*,jax.*,torch.*]
ignore_missing_imports = True
"""


@pytest.mark.slow
def test_a_typed_user_script_sees_current_learning_rate(tmp_path: Path) -> None:
    """Mypy --strict over a user script: the classes, the property, nothing else reported."""
    api = pytest.importorskip("mypy.api")
    config = tmp_path / "mypy.ini"
    config.write_text(CONFIG)
    stdout, stderr, _ = api.run(
        ["--config-file", str(config), "--cache-dir", str(tmp_path / "cache"), str(SCRIPT)]
    )
    lines = [line.split(": ", 1)[1] for line in stdout.splitlines() if "user_script.py:" in line]
    revealed = [
        re.sub(r"^note: Revealed type is ", "", line) for line in lines if "Revealed" in line
    ]
    assert revealed == [
        '"introspect_opt._keras3.optimizers.IntrospectableAdam"',
        '"Any"',
        '"introspect_opt._keras3.mixin.IntrospectableOptimizer"',
        '"introspect_opt._keras3.mixin.IntrospectableOptimizer"',
    ], stdout + stderr
    errors = [line for line in lines if line.startswith("error")]
    assert errors == [
        'error: Property "current_learning_rate" defined in "IntrospectableOptimizer" is '
        "read-only  [misc]"
    ], stdout
