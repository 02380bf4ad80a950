"""Every ```python block of README.md and docs/*.md runs, so the snippets cannot rot.

Each block runs on its own, in a fresh namespace, with a temporary folder as
the working directory, and must finish without a ``UserWarning`` or
``RuntimeWarning`` (a warning in a snippet is a snippet that does not do what
it says: a plateau callback watching a metric that is not logged, say).

Blocks may leave out the data the surrounding prose has set up. The preamble
fills in, only where a block uses the name without defining it:

- ``x``, ``y``: 64 regression samples, 8 features and 1 target (float32 NumPy);
- ``schedule``: the README's
  ``CosineDecay(0.0, 10_000, warmup_target=0.1, warmup_steps=500)``;
- ``model``: a one-layer regression model on ``x``, compiled with
  ``IntrospectableSGD(schedule, momentum=0.9)`` and ``loss="mse"``, not trained.

Modules are never filled in: a block that uses ``keras`` or ``introspect_opt``
imports it, as a reader who copies it must. Any other undefined name fails.

HTML comments on the lines right before a block's fence direct the test (one
per line; an unknown one fails the collection):

- ``<!-- snippet: skip (why) -->``: not run (say why; use sparingly);
- ``<!-- snippet: requires mlflow, wandb -->``: skipped where a module is missing;
- ``<!-- snippet: backend jax torch -->``: runs on those Keras backends only.

A block that imports ``tensorflow`` or ``tf_keras`` uses TensorFlow-only APIs:
it is marked ``tf_only`` and skipped on the JAX and torch backends.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

# Whole matrices and many fits: `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE_OPEN = re.compile(r"^(?P<indent>\s*)```python\s*$")
_FENCE_CLOSE = re.compile(r"^\s*```\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*snippet:\s*(?P<directive>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Snippet:
    """One ```python block: where it is, its code, and the directives before it."""

    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    directives: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def collect(path: Path) -> list[Snippet]:
    """The ```python blocks of a Markdown file, dedented to their fence."""
    lines = path.read_text().splitlines()
    snippets = []
    index = 0
    while index < len(lines):
        opening = _FENCE_OPEN.match(lines[index])
        if opening is None:
            index += 1
            continue
        start = index
        indent = len(opening.group("indent"))
        index += 1
        body = []
        while index < len(lines) and not _FENCE_CLOSE.match(lines[index]):
            body.append(lines[index][indent:])
            index += 1
        if index == len(lines):
            raise ValueError(f"{path}:{start + 1}: a ```python block is never closed")
        directives = []
        for line in reversed([line for line in lines[:start] if line.strip()]):
            directive = _DIRECTIVE.match(line)
            if directive is None:
                break
            directives.insert(0, directive.group("directive"))
        snippets.append(Snippet(path, start + 1, "\n".join(body) + "\n", tuple(directives)))
        index += 1
    return snippets


def marks(snippet: Snippet) -> list[pytest.MarkDecorator]:
    """The pytest marks a snippet's directives and its imports ask for."""
    found = []
    for directive in snippet.directives:
        word, _, rest = directive.partition(" ")
        names = [name for name in re.split(r"[\s,]+", rest) if name]
        if word == "skip" and re.fullmatch(r"\(.+\)", rest.strip()):
            found.append(pytest.mark.skip(reason=f"{snippet.id}: {rest.strip()[1:-1]}"))
        elif word == "requires" and names:
            missing = [n for n in names if importlib.util.find_spec(n.split(".")[0]) is None]
            if missing:
                found.append(pytest.mark.skip(reason=f"needs {', '.join(missing)}"))
        elif word == "backend" and names:
            if BACKEND not in names:
                found.append(
                    pytest.mark.skip(reason=f"for the {'/'.join(names)} backend; this is {BACKEND}")
                )
        else:
            raise ValueError(
                f"{snippet.id}: unknown directive <!-- snippet: {directive} -->; "
                "expected 'skip (why)', 'requires MODULE, ...' or 'backend NAME ...'"
            )
    if imported_modules(snippet.code) & {"tensorflow", "tf_keras"}:
        found.append(pytest.mark.tf_only)
    return found


def imported_modules(code: str) -> set[str]:
    """The top-level packages a block imports."""
    modules = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def undefined_names(code: str) -> set[str]:
    """Names a block reads but never binds (nor imports), other than builtins."""
    read, bound = set(), set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return read - bound - set(dir(builtins))


# The preamble: what a page's prose sets up, made small and fast.


def _data() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    return {"x": x, "y": y}


def _schedule() -> Any:
    return keras.optimizers.schedules.CosineDecay(0.0, 10_000, warmup_target=0.1, warmup_steps=500)


def _model() -> Any:
    from introspect_opt import IntrospectableSGD

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(IntrospectableSGD(_schedule(), momentum=0.9), loss="mse")
    return model


PREAMBLE: dict[str, Callable[[], Any]] = {
    "x": lambda: _data()["x"],
    "y": lambda: _data()["y"],
    "schedule": _schedule,
    "model": _model,
}


SNIPPETS = [snippet for path in DOCUMENTS for snippet in collect(path)]


def test_snippets_were_found() -> None:
    """The collection sees the README's blocks (a broken fence pattern would see none)."""
    assert sum(snippet.path.name == "README.md" for snippet in SNIPPETS) >= 3


def test_collect_reads_indented_blocks_and_their_directives(tmp_path: Path) -> None:
    """A block in a list item is dedented; the comments right above it are its directives."""
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n"
        "```python\nx = 1\n```\n\n"
        "- item\n\n"
        "  <!-- snippet: requires mlflow -->\n"
        "  <!-- snippet: backend jax -->\n"
        "  ```python\n  if x:\n      y = 2\n  ```\n"
        "```bash\nls\n```\n"
    )
    first, second = collect(page)
    assert (first.line, first.code, first.directives) == (3, "x = 1\n", ())
    assert (second.line, second.code) == (11, "if x:\n    y = 2\n")
    assert second.directives == ("requires mlflow", "backend jax")
    assert undefined_names(second.code) == {"x"}


@pytest.mark.parametrize(
    "snippet",
    [pytest.param(snippet, id=snippet.id, marks=marks(snippet)) for snippet in SNIPPETS],
)
def test_snippet_runs(snippet: Snippet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block runs on its own (with the preamble's data) and warns of nothing."""
    missing = undefined_names(snippet.code) - set(PREAMBLE)
    assert not missing, (
        f"{snippet.id} uses {sorted(missing)} without defining or importing them; "
        "import them in the block (the preamble fills in only data: "
        f"{', '.join(sorted(PREAMBLE))})"
    )
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for name in sorted(undefined_names(snippet.code)):
        namespace[name] = PREAMBLE[name]()
    monkeypatch.chdir(tmp_path)
    # Blank lines before the code keep tracebacks at the Markdown file's line numbers.
    code = compile("\n" * snippet.line + snippet.code, str(snippet.path), "exec")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(code, namespace)
    problems = {
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})": None
        for w in caught
        if issubclass(w.category, (UserWarning, RuntimeWarning))
    }
    assert not problems, f"{snippet.id} warns:\n" + "\n".join(problems)
