"""Every module path a docstring or a comment names exists: a file path (``deployments/engine/stats.py``)
or a dotted name (``deployments.routing.policy.RoutingPolicy``, ``:mod:`chat_formats.glm4```).

Moving a module without its references leaves readers chasing files that are gone; this
fails instead, naming the docstring and the path."""

from __future__ import annotations

import ast
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"deployments": ROOT / "deployments", "chat_formats": ROOT / "glm_client" / "src" / "chat_formats",
            "glm_client": ROOT / "glm_client" / "src" / "glm_client", "benchmarks": ROOT / "benchmarks"}
SCANNED = [p for folder in PACKAGES.values() for p in sorted(folder.rglob("*.py"))]

FILE_PATH = re.compile(r"(?<![\w/.])((?:deployments|benchmarks|glm_client|config|deploy|docs|scripts|tests)"
                       r"/[\w./-]*\.(?:py|md|yaml|json))")
GENERATED = ("benchmarks/results/",)
"""Written by a run, not checked in: a docstring may say where its output goes."""
DOTTED = re.compile(r"(?<![\w./-])((?:deployments|chat_formats|glm_client|benchmarks)(?:\.[A-Za-z_]\w*)+)")


def _docstrings(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield getattr(node, "name", "<module>"), doc
        # Attribute docstrings: a string statement right after an assignment.
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for before, stmt in zip(body, body[1:]):
                if (isinstance(before, (ast.Assign, ast.AnnAssign)) and isinstance(stmt, ast.Expr)
                        and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
                    yield f"line {stmt.lineno}", stmt.value.value


def _comments(path: Path):
    with path.open("rb") as source:
        for token in tokenize.tokenize(source.readline):
            if token.type == tokenize.COMMENT:
                yield f"line {token.start[0]}", token.string


def _module_file(dotted: list[str]) -> Path | None:
    top = PACKAGES.get(dotted[0])
    if top is None:
        return None
    base = top.joinpath(*dotted[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    # Imports anywhere at module level count, those under ``if TYPE_CHECKING:`` included.
    names = {(a.asname or a.name).split(".")[0] for node in ast.walk(tree)
             if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def dotted_problem(name: str) -> str | None:
    """Why ``name`` (a dotted module path, maybe ending in an attribute) names nothing, or None."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = _module_file(parts[:cut])
        if module is None:
            continue
        rest = parts[cut:]
        if rest and rest[0] not in _top_level_names(module) and not (module.parent / rest[0]).exists():
            return f"{'.'.join(parts[:cut])} has no {rest[0]!r}"
        return None
    return "no such module"


def file_problem(path: str) -> str | None:
    """Why ``path`` (relative to the repository) names no file, or None."""
    candidates = [ROOT / path, ROOT / "glm_client" / "src" / path.removeprefix("glm_client/")]
    return None if any(c.exists() for c in candidates) else "no such file"


def _problems(path: Path) -> list[str]:
    found = []
    for where, doc in [*_docstrings(path), *_comments(path)]:
        for ref in FILE_PATH.findall(doc):
            why = None if ref.startswith(GENERATED) else file_problem(ref.rstrip("."))
            if why:
                found.append(f"{path.relative_to(ROOT)} ({where}): {ref}: {why}")
        for ref in DOTTED.findall(doc):
            why = dotted_problem(ref.rstrip("."))
            if why:
                found.append(f"{path.relative_to(ROOT)} ({where}): {ref}: {why}")
    return found


def test_every_module_path_a_docstring_names_exists():
    problems = [line for path in SCANNED for line in _problems(path)]
    assert not problems, "docstrings naming paths that do not exist:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("ref,ok", [
    ("deployments.routing.policy.RoutingPolicy", True),
    ("deployments.routing.policy", True),
    ("deployments.stream_channel", True),
    ("deployments.protocol", False),
    ("deployments.routing.policy.NoSuchThing", False),
    ("chat_formats.glm4.Glm4Format", True),
])
def test_dotted_names_are_checked_against_the_code(ref, ok):
    assert (dotted_problem(ref) is None) is ok


def test_file_paths_are_checked_against_the_tree():
    assert file_problem("deployments/engine/stats.py") is None
    assert file_problem("deployments/stream_channel.py") == "no such file"
