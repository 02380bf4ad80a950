"""Type checkers and editors know what introspectable optimizers add, in both Keras worlds.

One mypy --strict run over the scripts in tests/typing/ (and one generated from
the tables of ready-made classes); each test reads its script's lines.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "typing"
TABLES = {
    "_keras3": ROOT / "introspect_opt" / "_keras3" / "optimizers.py",
    "_tf_keras": ROOT / "introspect_opt" / "_tf_keras" / "optimizers.py",
}
FACTORIES = {
    "IntrospectableOptimizer": ROOT / "introspect_opt" / "_keras3" / "factory.py",
    "_IntrospectionMixin": ROOT / "introspect_opt" / "_tf_keras" / "factory.py",
}
KERAS3_BASE = "introspect_opt._keras3.mixin.IntrospectableOptimizer"
TF_KERAS_BASE = "introspect_opt._tf_keras.mechanism._IntrospectionMixin"

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


def table(world: str) -> list[str]:
    """The class names a table of ready-made classes declares, in its order."""
    tree = ast.parse(TABLES[world].read_text())
    return [node.name for node in tree.body if isinstance(node, ast.ClassDef)]


def _every_class_script() -> str:
    """Each ready-made class, instantiated and passed where its world's base is expected."""
    lines = [
        "import introspect_opt",
        "from introspect_opt import tf_keras as itk",
        "from introspect_opt._tf_keras.mechanism import _IntrospectionMixin",
        "def keras3(optimizer: introspect_opt.IntrospectableOptimizer) -> None: ...",
        "def tf_keras(optimizer: _IntrospectionMixin) -> None: ...",
    ]
    for name in table("_keras3"):
        lines += [f"reveal_type(introspect_opt.{name}())", f"keras3(introspect_opt.{name}())"]
    for name in table("_tf_keras"):
        lines += [f"reveal_type(itk.{name}())", f"tf_keras(itk.{name}())"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def mypy_lines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Lines mypy printed about each script (``note: Revealed type is ...``, ``error: ...``)."""
    api = pytest.importorskip("mypy.api")
    tmp = tmp_path_factory.mktemp("mypy")
    (tmp / "mypy.ini").write_text(CONFIG)
    generated = tmp / "every_class.py"
    generated.write_text(_every_class_script())
    scripts = [*sorted(SCRIPTS.glob("*.py")), generated]
    stdout, stderr, _ = api.run(
        ["--config-file", str(tmp / "mypy.ini"), "--cache-dir", str(tmp / "cache")]
        + [str(script) for script in scripts]
    )
    lines: dict[str, list[str]] = {script.name: [] for script in scripts}
    for line in stdout.splitlines():
        path, _, rest = line.partition(": ")
        name = Path(path.split(":")[0]).name
        if name in lines:
            lines[name].append(rest)
    assert lines["user_script.py"], stdout + stderr
    return lines


def revealed(lines: list[str]) -> list[str]:
    return [re.sub(r"^note: Revealed type is ", "", line) for line in lines if "Revealed" in line]


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("error")]


@pytest.mark.slow
def test_a_typed_user_script_sees_current_learning_rate(mypy_lines: dict[str, list[str]]) -> None:
    """Mypy --strict over a user script: the classes, the property, nothing else reported."""
    lines = mypy_lines["user_script.py"]
    assert revealed(lines) == [
        '"introspect_opt._keras3.optimizers.IntrospectableAdam"',
        '"Any"',
        f'"{KERAS3_BASE}"',
        f'"{KERAS3_BASE}"',
        f'"{KERAS3_BASE}"',
    ], lines
    assert errors(lines) == [
        'error: Property "current_learning_rate" defined in "IntrospectableOptimizer" is '
        "read-only  [misc]"
    ], lines


@pytest.mark.slow
def test_every_ready_made_class_is_typed_as_itself(mypy_lines: dict[str, list[str]]) -> None:
    """Each line of both tables is, for mypy, its own class and a subclass of its world's base."""
    keras3, tf_keras = table("_keras3"), table("_tf_keras")
    assert len(keras3) >= 13 and len(tf_keras) >= 19
    lines = mypy_lines["every_class.py"]
    assert revealed(lines) == [
        *(f'"introspect_opt._keras3.optimizers.{name}"' for name in keras3),
        *(f'"introspect_opt._tf_keras.optimizers.{name}"' for name in tf_keras),
    ], lines
    assert errors(lines) == [], lines


@pytest.mark.slow
def test_keras2_md_types_section(mypy_lines: dict[str, list[str]]) -> None:
    """docs/keras2.md, "Types": top-level names typed as Keras 3's; introspect_opt.tf_keras's own.

    Also: ``introspect`` and ``introspectable`` take the same argument types in
    both worlds and return that world's introspectable base.
    """
    lines = mypy_lines["worlds.py"]
    assert revealed(lines) == [
        '"introspect_opt._keras3.optimizers.IntrospectableSGD"',
        f'"def (optimizer: object) -> {KERAS3_BASE}"',
        f'"def (optimizer_class: type[object]) -> type[{KERAS3_BASE}]"',
        '"introspect_opt._tf_keras.optimizers.IntrospectableSGD"',
        '"introspect_opt._tf_keras.optimizers.IntrospectableLegacySGD"',
        f'"def (optimizer: object) -> {TF_KERAS_BASE}"',
        f'"def (optimizer_class: type[object]) -> type[{TF_KERAS_BASE}]"',
        '"Any"',
    ], lines
    assert errors(lines) == [], lines
    assert "## Types" in (ROOT / "docs" / "keras2.md").read_text()


@pytest.mark.slow
def test_star_imports_give_the_ready_made_classes(mypy_lines: dict[str, list[str]]) -> None:
    """``from introspect_opt[.tf_keras] import *``: mypy sees the classes of the tables too."""
    assert revealed(mypy_lines["star_import.py"]) == [
        '"introspect_opt._keras3.optimizers.IntrospectableScheduleFreeAdamW"',
        f'"def (optimizer: object) -> {KERAS3_BASE}"',
    ], mypy_lines["star_import.py"]
    assert revealed(mypy_lines["star_import_tf_keras.py"]) == [
        '"introspect_opt._tf_keras.optimizers.IntrospectableLegacyFtrl"',
        f'"def (optimizer: object) -> {TF_KERAS_BASE}"',
    ], mypy_lines["star_import_tf_keras.py"]
    assert errors(mypy_lines["star_import.py"] + mypy_lines["star_import_tf_keras.py"]) == []


def _typing_paragraph(base: str, function: str) -> str:
    """The "Type checkers see ..." paragraph of a factory docstring, its base named ``<base>``."""
    tree = ast.parse(FACTORIES[base].read_text())
    (node,) = (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    doc = ast.get_docstring(node) or ""
    found = re.search(r"Type checkers see .*?(?:\n\n|\Z)", doc, re.DOTALL)
    assert found, f"{FACTORIES[base]}: {function}() does not say how type checkers see it"
    return " ".join(found.group(0).replace(base, "<base>").split())


@pytest.mark.parametrize("function", ["introspect", "introspectable"])
def test_both_worlds_document_the_types_alike(function: str) -> None:
    """The Keras 3 and tf_keras factories say the same about their types."""
    keras3, tf_keras = (_typing_paragraph(base, function) for base in FACTORIES)
    assert keras3 == tf_keras
