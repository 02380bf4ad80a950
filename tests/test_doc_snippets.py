"""Every ```python block of README.md and docs/*.md runs as written, so the snippets cannot rot.

"As written" means as if pasted into a fresh file: each block runs on its own,
in a fresh namespace (``__name__ == "__main__"``) with nothing filled in, with
a temporary folder as the working directory. It must import or define every
name it uses, and finish without a ``UserWarning`` or ``RuntimeWarning`` (a
warning in a snippet is a snippet that does not do what it says: a plateau
callback watching a metric that is not logged, say).

A block that is deliberately a fragment says so where readers see it: the
line right above it (HTML comments below may sit in between) is

    *Fragment: what it assumes, or why it cannot run here.*

Such a block is parsed (its syntax must hold) and not run. That visible
marker is the only way to keep a block from running: an unmarked block that
fails is a test failure.

HTML comments on the lines right before a block's fence direct the test (one
per line; an unknown one fails the collection):

- ``<!-- snippet: requires mlflow, wandb -->``: skipped where a module is missing;
- ``<!-- snippet: backend jax torch -->``: runs on those Keras backends only;
- ``<!-- snippet: keras2 -->``: Keras 2 code. It must set
  ``os.environ["TF_USE_LEGACY_KERAS"] = "1"`` itself before it imports
  TensorFlow (as a reader's fresh file must), so it runs in a separate Python
  process, where ``tf.keras`` is ``tf_keras``; skipped where ``tf_keras`` is not
  installed. All Keras 2 blocks share one such process (one TensorFlow start),
  each in a fresh namespace and a folder of its own.

A block that imports ``tensorflow`` or ``tf_keras`` uses TensorFlow-only APIs:
it is marked ``tf_only`` and skipped on the JAX and torch backends.
"""

from __future__ import annotations

import ast
import builtins
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import pytest

# Many small fits and a subprocess: `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE_OPEN = re.compile(r"^(?P<indent>\s*)```python\s*$")
_FENCE_CLOSE = re.compile(r"^\s*```\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*snippet:\s*(?P<directive>.*?)\s*-->\s*$")
_FRAGMENT = re.compile(r"^\*Fragment:\s*(?P<why>.+?)\*$", re.DOTALL)
_LEGACY_SWITCH = 'os.environ["TF_USE_LEGACY_KERAS"] = "1"'


@dataclass(frozen=True)
class Snippet:
    """One ```python block: where it is, its code, its directives, its fragment marker."""

    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    directives: tuple[str, ...]
    fragment: str | None  # the marker's reason, or None for a block that must run

    @property
    def id(self) -> str:
        page = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{page.as_posix()}:{self.line}"

    @property
    def keras2(self) -> bool:
        return "keras2" in self.directives


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
        directives, fragment = _read_above(lines[:start])
        code = "\n".join(body) + "\n"
        snippets.append(Snippet(path, start + 1, code, tuple(directives), fragment))
        index += 1
    return snippets


def _read_above(lines: list[str]) -> tuple[tuple[str, ...], str | None]:
    """The directives right above a fence, and the fragment marker above them, if any.

    The marker is the whole paragraph right above the block (the directives
    aside): ``*Fragment: ...*``, possibly over several lines.
    """
    directives: list[str] = []
    index = len(lines) - 1
    while index >= 0:
        line = lines[index]
        directive = _DIRECTIVE.match(line)
        if directive is not None:
            directives.insert(0, directive.group("directive"))
        elif line.strip():
            break
        index -= 1
    paragraph: list[str] = []
    while index >= 0 and lines[index].strip() and not _DIRECTIVE.match(lines[index]):
        paragraph.insert(0, lines[index].strip())
        index -= 1
    marker = _FRAGMENT.match(" ".join(paragraph))
    return tuple(directives), marker.group("why").strip() if marker else None


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def marks(snippet: Snippet) -> list[pytest.MarkDecorator]:
    """The pytest marks a snippet's directives and its imports ask for."""
    found = []
    for directive in snippet.directives:
        word, _, rest = directive.partition(" ")
        names = [name for name in re.split(r"[\s,]+", rest) if name]
        if word == "requires" and names:
            missing = [n for n in names if importlib.util.find_spec(n.split(".")[0]) is None]
            if missing:
                found.append(pytest.mark.skip(reason=f"needs {', '.join(missing)}"))
        elif word == "backend" and names:
            if BACKEND not in names:
                found.append(
                    pytest.mark.skip(reason=f"for the {'/'.join(names)} backend; this is {BACKEND}")
                )
        elif word == "keras2" and not rest:
            # The distribution, not find_spec: tests/tf_keras is on sys.path as
            # a namespace package of that name where tf-keras is not installed.
            if not _installed("tf-keras"):
                found.append(pytest.mark.skip(reason="Keras 2 code; needs tf_keras"))
        else:
            raise ValueError(
                f"{snippet.id}: unknown directive <!-- snippet: {directive} -->; expected "
                "'requires MODULE, ...', 'backend NAME ...' or 'keras2'. To keep a block "
                "from running, mark it on the page, right above it: *Fragment: why.*"
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


def check_self_contained(snippet: Snippet) -> None:
    """Fails with a clear message when a block uses a name it neither imports nor defines."""
    missing = undefined_names(snippet.code)
    assert not missing, (
        f"{snippet.id} uses {sorted(missing)} without defining or importing them: a reader "
        "who pastes it into a fresh file gets a NameError. Make the block complete, or mark "
        "it on the page, right above it: *Fragment: assumes ... from above.*"
    )


def check_keras2_switch(snippet: Snippet) -> None:
    """A Keras 2 block sets TF_USE_LEGACY_KERAS itself, before anything imports TensorFlow."""
    lines = snippet.code.splitlines()
    switch = [n for n, line in enumerate(lines) if line.startswith(_LEGACY_SWITCH)]
    imports = [
        n
        for n, line in enumerate(lines)
        if re.match(r"\s*(import|from)\s+(tensorflow|tf_keras|introspect_opt|keras)\b", line)
    ]
    assert switch and (not imports or switch[0] < imports[0]), (
        f"{snippet.id} is Keras 2 code: it must run `{_LEGACY_SWITCH}` before it imports "
        "TensorFlow, Keras or introspect_opt, as a fresh file must"
    )


SNIPPETS = [snippet for path in DOCUMENTS for snippet in collect(path)]
KERAS2_SNIPPETS = [s for s in SNIPPETS if s.keras2 and s.fragment is None]


def test_snippets_were_found() -> None:
    """The collection sees the README's example and the pages' blocks."""
    assert sum(snippet.path.name == "README.md" for snippet in SNIPPETS) >= 1
    assert len(SNIPPETS) >= 20
    assert KERAS2_SNIPPETS


def test_collect_reads_indented_blocks_directives_and_fragment_markers(tmp_path: Path) -> None:
    """A block in a list item is dedented; the comments and the marker above it are read."""
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n"
        "```python\nx = 1\n```\n\n"
        "- item\n\n"
        "  <!-- snippet: requires mlflow -->\n"
        "  <!-- snippet: backend jax -->\n"
        "  ```python\n  if x:\n      y = 2\n  ```\n"
        "```bash\nls\n```\n\n"
        "*Fragment: assumes `model`\n  from above.*\n\n"
        "<!-- snippet: backend torch -->\n"
        "```python\nmodel.fit()\n```\n\n"
        "*Fragment: not right above the block.*\n\n"
        "Some prose.\n\n"
        "```python\nz = 3\n```\n\n"
        "Prose that ends with *Fragment: a quote.*\n"
        "```python\nw = 4\n```\n"
    )
    first, second, third, fourth, fifth = collect(page)
    assert (first.line, first.code, first.directives, first.fragment) == (3, "x = 1\n", (), None)
    assert (second.line, second.code) == (11, "if x:\n    y = 2\n")
    assert second.directives == ("requires mlflow", "backend jax")
    assert second.fragment is None
    assert undefined_names(second.code) == {"x"}
    assert third.fragment == "assumes `model` from above."
    assert third.directives == ("backend torch",)
    assert fourth.fragment is None
    assert fifth.fragment is None


def test_a_hidden_skip_directive_is_refused(tmp_path: Path) -> None:
    """The old invisible `skip` comment no longer keeps a block from running: it fails."""
    page = tmp_path / "page.md"
    page.write_text("<!-- snippet: skip (why) -->\n```python\nx = 1\n```\n")
    (snippet,) = collect(page)
    with pytest.raises(ValueError, match=r"\*Fragment: why\.\*"):
        marks(snippet)


def test_an_incomplete_block_fails(tmp_path: Path) -> None:
    """An unmarked block that uses a name from the prose fails, naming the name."""
    page = tmp_path / "page.md"
    page.write_text("```python\nmodel.fit(x, y)\n```\n")
    (snippet,) = collect(page)
    with pytest.raises(AssertionError, match=r"\['model', 'x', 'y'\]"):
        check_self_contained(snippet)


def _exec_block(snippet: Snippet) -> dict[str, None]:
    """Runs a block in a fresh namespace; returns the warnings it raised that count."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    # Blank lines before the code keep tracebacks at the Markdown file's line numbers.
    code = compile("\n" * snippet.line + snippet.code, str(snippet.path), "exec")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(code, namespace)
    return {
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})": None
        for w in caught
        if issubclass(w.category, (UserWarning, RuntimeWarning))
    }


@pytest.mark.parametrize(
    "snippet",
    [
        pytest.param(snippet, id=snippet.id, marks=marks(snippet))
        for snippet in SNIPPETS
        if not snippet.keras2 or snippet.fragment is not None
    ],
)
def test_snippet_runs(snippet: Snippet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block runs as written, in a fresh namespace, and warns of nothing."""
    if snippet.fragment is not None:
        ast.parse(snippet.code)
        pytest.skip(f"{snippet.id}: fragment: {snippet.fragment}")
    check_self_contained(snippet)
    monkeypatch.chdir(tmp_path)
    problems = _exec_block(snippet)
    assert not problems, f"{snippet.id} warns:\n" + "\n".join(problems)


# Run in the Keras 2 process: each block in a fresh namespace and folder; the
# results (a traceback, or the warnings that count) go to a JSON file, away
# from TensorFlow's start-up noise.
_KERAS2_RUNNER = """
import json, os, sys, tempfile, traceback, warnings

blocks = json.load(open(sys.argv[1]))
results = {}
for block in blocks:
    os.chdir(tempfile.mkdtemp())
    namespace = {"__name__": "__main__"}
    code = compile("\\n" * block["line"] + block["code"], block["path"], "exec")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(code, namespace)
    except BaseException:
        results[block["id"]] = {"error": traceback.format_exc(), "warnings": []}
        continue
    results[block["id"]] = {
        "error": None,
        "warnings": sorted({
            f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
            for w in caught
            if issubclass(w.category, (UserWarning, RuntimeWarning))
        }),
    }
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def keras2_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs every Keras 2 block, in page order, in one fresh Python process."""
    folder = tmp_path_factory.mktemp("keras2")
    blocks = [
        {"id": s.id, "path": str(s.path), "line": s.line, "code": s.code} for s in KERAS2_SNIPPETS
    ]
    (folder / "blocks.json").write_text(json.dumps(blocks))
    (folder / "runner.py").write_text(_KERAS2_RUNNER)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    completed = subprocess.run(
        [sys.executable, "runner.py", str(folder / "blocks.json"), str(folder / "results.json")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results: dict[str, Any] = json.loads((folder / "results.json").read_text())
    return results


@pytest.mark.parametrize(
    "snippet",
    [pytest.param(snippet, id=snippet.id, marks=marks(snippet)) for snippet in KERAS2_SNIPPETS],
)
def test_keras2_snippet_runs(snippet: Snippet, keras2_results: dict[str, Any]) -> None:
    """The Keras 2 block runs as written where tf.keras is tf_keras, and warns of nothing."""
    check_self_contained(snippet)
    check_keras2_switch(snippet)
    result = keras2_results[snippet.id]
    assert result["error"] is None, f"{snippet.id} fails:\n{result['error']}"
    assert not result["warnings"], f"{snippet.id} warns:\n" + "\n".join(result["warnings"])
