"""docs/architecture.md, kept true: which package may import which.

Every import in the package (top-level or inside a function) is read from the
source with ``ast`` and checked against the table below, which is the one in
docs/architecture.md. Private Keras, TensorFlow and tf_keras modules are
imported only by each world's ``compat`` module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("introspect_opt", "introspect_opt_cli")

# Layer -> the layers of ours it may import. A module's layer is its first
# private sub-package (introspect_opt/_keras3/mixin.py -> "_keras3"); the
# package's own __init__.py and tf_keras.py are the "surface".
ALLOWED: dict[str, set[str]] = {
    "surface": {
        "_env",
        "_version",
        "_keras3",
        "_features",
        "_callbacks",
        "_preview",
        "_tf_keras",
        "cli",
    },
    "_env": set(),
    "_version": set(),
    "_common": set(),
    "_keras3": {"_common"},
    "_features": {"_common", "_keras3"},
    "_callbacks": {"_common", "_keras3", "_features"},
    "_preview": {"_common", "_keras3", "_features", "cli"},
    "_tf_keras": {"_common", "_env"},
    # The command line: its own modules only, and introspect_opt (all of it,
    # through the surface) inside the functions that need Keras.
    "cli": {"surface", "_keras3", "_features", "_preview"},
}

# Third-party modules that only a world's compat module may import.
PRIVATE_UPSTREAM = re.compile(r"^(keras\.src|tensorflow\.python|tf_keras\.src)(\.|$)")
# Packages a layer must not import at all (the CLI answers without them).
FORBIDDEN_AT_MODULE_LEVEL = {"cli": {"keras", "tensorflow", "tf_keras", "jax", "torch"}}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "introspect_opt_cli":
        return "cli"
    if len(parts) == 1 or parts[1] in ("tf_keras", "__main__"):
        return "surface"
    return parts[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        at_top = id(node) in top_level or _under_type_checking(tree, node)
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, at_top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((name, node.lineno, at_top))
            if name in PACKAGES or name.endswith("._keras3.persistence"):
                found += [(f"{name}.{alias.name}", node.lineno, at_top) for alias in node.names]
    return found


def _under_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for top in tree.body:
        if (
            isinstance(top, ast.If)
            and "TYPE_CHECKING" in ast.unparse(top.test)
            and any(node is inner for inner in ast.walk(top))
        ):
            return True
    return False


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_layers_are_the_ones_the_architecture_page_describes() -> None:
    """Every private sub-package has a row in the table and a paragraph on the page."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    layers = {layer_of(module_name(p)) for p in source_files()}
    assert layers == set(ALLOWED), sorted(layers ^ set(ALLOWED))
    for layer in ALLOWED:
        if layer.startswith("_"):
            assert f"`introspect_opt/{layer}" in page, layer
    assert "`introspect_opt_cli/`" in page


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_what_its_layer_may(path: Path) -> None:
    """docs/architecture.md: the allowed imports between layers; private upstream only in compat."""
    module = module_name(path)
    layer = layer_of(module)
    wrong = []
    for name, line, at_top in imports(path):
        where = f"{path.relative_to(ROOT)}:{line} imports {name}"
        if PRIVATE_UPSTREAM.match(name) and not module.endswith(".compat"):
            wrong.append(f"{where} (a private upstream module: only compat may)")
        if name.split(".")[0] in PACKAGES:
            target = layer_of(name)
            if target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{where} (layer {layer} may import {sorted(ALLOWED[layer])})")
            if layer == "cli" and target != "cli" and at_top:
                wrong.append(f"{where} (the command line imports introspect_opt only when needed)")
        forbidden = FORBIDDEN_AT_MODULE_LEVEL.get(layer, set())
        if at_top and name.split(".")[0] in forbidden:
            wrong.append(f"{where} (not at module level in layer {layer})")
    assert not wrong, "\n".join(wrong)


def test_the_surface_only_re_exports() -> None:
    """__init__.py and tf_keras.py define no class and no function but __getattr__."""
    for path in (ROOT / "introspect_opt" / "__init__.py", ROOT / "introspect_opt" / "tf_keras.py"):
        tree = ast.parse(path.read_text())
        defined = [
            node.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name != "__getattr__"
        ]
        assert defined == [], (path.name, defined)
