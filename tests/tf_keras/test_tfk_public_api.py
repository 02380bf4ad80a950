"""The public surface of introspect_opt.tf_keras: names, documentation, runnable examples."""

from __future__ import annotations

import doctest
import inspect
import subprocess
import sys
from typing import Any

import pytest

from introspect_opt import tf_keras as itk
from introspect_opt._tf_keras import mechanism as mechanism


def public_objects() -> dict[str, Any]:
    """Every public name, plus the public methods the mixins add to the classes."""
    objects = {name: getattr(itk, name) for name in itk.__all__}
    for mixin in (mechanism.NewIntrospectionMixin, mechanism._IntrospectionMixin):
        for name, value in vars(mixin).items():
            if not name.startswith("_"):
                objects[f"{mixin.__name__}.{name}"] = value
    return objects


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ matches what the module exports without an underscore, sorted."""
    public = {name for name in vars(itk) if not name.startswith("_")}
    assert set(itk.__all__) == public - {"annotations"}
    assert itk.__all__ == sorted(itk.__all__)


@pytest.mark.parametrize("name", sorted(public_objects()))
def test_every_public_name_is_documented_with_an_example(name: str) -> None:
    """Google-style docstring with an Examples section, on every public name."""
    obj = public_objects()[name]
    doc = inspect.getdoc(obj.fget if isinstance(obj, property) else obj) or ""
    assert "Examples:" in doc and ">>>" in doc, name


def test_the_examples_run() -> None:
    """Every `>>>` example in the public docstrings runs and prints what it shows."""
    finder = doctest.DocTestFinder(exclude_empty=True, recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    ran = 0
    for name, obj in sorted(public_objects().items()):
        target = obj.fget if isinstance(obj, property) else obj
        for test in finder.find(target, name, globs={}):
            result = runner.run(test)
            ran += result.attempted
            assert result.failed == 0, name
    assert ran > 60


def test_importing_the_package_does_not_import_tf_keras() -> None:
    """`import introspect_opt` (Keras 3) works without loading tf_keras; the module loads it."""
    code = (
        "import sys, introspect_opt; assert 'tf_keras' not in sys.modules, 'tf_keras loaded';"
        "import introspect_opt.tf_keras; assert 'tf_keras' in sys.modules"
    )
    env_free = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=120,
    )
    assert env_free.returncode == 0, env_free.stderr[-2000:]


def test_no_tf_keras_module_inspects_call_frames() -> None:
    """No code of the tf_keras modules reads call stacks or other functions' locals."""
    import ast
    import pathlib

    import introspect_opt

    frame_attributes = {"f_locals", "f_back", "f_globals", "f_code", "tb_frame"}
    module_functions = {
        "sys": {"_getframe", "exc_info", "settrace", "setprofile"},
        "inspect": {"currentframe", "stack", "trace", "getouterframes", "getinnerframes"},
    }
    package = pathlib.Path(introspect_opt.__file__).parent
    files = [*sorted((package / "_tf_keras").glob("*.py")), package / "tf_keras.py"]
    assert len(files) >= 9
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                if node.attr in frame_attributes or node.attr in module_functions.get(
                    owner or "", set()
                ):
                    found.append(f"{path.name}:{node.lineno} {node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module in module_functions:
                names = {alias.name for alias in node.names} & module_functions[node.module]
                found += [f"{path.name}:{node.lineno} {name}" for name in sorted(names)]
    assert found == []


def _keras_3_only_names_in_the_docs() -> list[str]:
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "keras2.md").read_text()
    paragraph = page.split("**Keras 3 only.**", 1)[1].split("tf_keras has no", 1)[0]
    names = re.findall(r"`([A-Za-z_]+)`", paragraph)
    prose = ("introspect_opt", "AttributeError", "NotImplementedError", "TypeError", "hasattr")
    return [n for n in names if n not in prose]


@pytest.mark.parametrize("name", _keras_3_only_names_in_the_docs())
def test_keras_3_only_names_say_so_under_keras_2(name: str) -> None:
    """docs/keras2.md, "Keras 3 only": each listed name raises a clear error.

    Both an AttributeError (``hasattr`` is False) and a NotImplementedError.
    """
    import os

    import introspect_opt

    assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    with pytest.raises(AttributeError, match=rf"introspect_opt\.{name} is Keras 3 only") as caught:
        getattr(introspect_opt, name)
    assert isinstance(caught.value, NotImplementedError)
    assert not hasattr(introspect_opt, name)


def test_the_keras_3_only_list_is_complete() -> None:
    """Every Keras 3 name tf_keras lacks is in docs/keras2.md's "Keras 3 only" list."""
    import introspect_opt
    from introspect_opt._keras3 import optimizers as keras_3_optimizers

    documented = set(_keras_3_only_names_in_the_docs())
    keras_3 = set(introspect_opt._KERAS_3_TOOLS) | set(keras_3_optimizers.__all__)
    lacking = keras_3 - set(itk.__all__)
    assert lacking <= documented, sorted(lacking - documented)
