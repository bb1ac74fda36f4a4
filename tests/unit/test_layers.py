"""The layer rule and the private surfaces, read from the imports of every module.

Imports only go down (docs/architecture.md):

    entry points (app, cli, proxy_gate)
      -> engine/ | ingress/                      (never each other)
      -> openai_api/ | routing/ | tenants/ | stream_channel/ | lora/
      -> config/
      -> core/
      -> chat_formats

Every import counts: at module level, inside a function, and under ``TYPE_CHECKING``.
A module that imports its own package (``from deployments.routing import X`` inside
``deployments/routing/``) is an edge to that package's ``__init__``, so a registry that
re-exports its plug-ins and is imported by them shows up as the cycle it is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"deployments": ROOT / "deployments", "chat_formats": ROOT / "glm_client" / "src" / "chat_formats",
           "glm_client": ROOT / "glm_client" / "src" / "glm_client"}

LAYERS: dict[str, int] = {
    "deployments.app": 0, "deployments.cli": 0, "deployments.proxy_gate": 0,
    "deployments.engine": 1, "deployments.ingress": 1,
    "deployments.openai_api": 2, "deployments.routing": 2, "deployments.tenants": 2,
    "deployments.stream_channel": 2, "deployments.lora": 2,
    "deployments.config": 3,
    "deployments.core": 4,
    "chat_formats": 5,
}
"""Each unit (a package or an entry-point module) and its layer, top (0) to bottom."""

VLLM_PRIVATE_SEAM = "deployments.engine.vllm_private"
VLLM_PUBLIC = {"vllm", "vllm.sampling_params", "vllm.exceptions", "vllm.lora.request"}
"""vLLM's documented surface; any other vllm module is private and only the seam imports it."""
SERVE_PRIVATE_SEAM = "deployments.core.serve_private"


def _module_name(path: Path) -> str:
    for top, folder in SOURCES.items():
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([top, *parts])
    raise ValueError(path)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for folder in SOURCES.values() for p in sorted(folder.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, as absolute names: ``from a.b import c`` is ``a.b.c``
    when that is a module of ours, else ``a.b``."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _unit(module: str) -> str | None:
    """The layered unit ``module`` belongs to (longest match), or None."""
    best = None
    for unit in LAYERS:
        if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best)):
            best = unit
    return best


def _edges(predicate):
    return sorted(f"{src} imports {dst}" for src, dsts in IMPORTS.items() for dst in dsts if predicate(src, dst))


def test_every_module_of_the_server_belongs_to_a_layer():
    unplaced = [m for m in MODULES if m.startswith("deployments.") and _unit(m) is None]
    assert not unplaced, f"modules outside every layer (add them to a package or to LAYERS): {unplaced}"


def test_imports_only_go_down():
    def upward(src: str, dst: str) -> bool:
        a, b = _unit(src), _unit(dst)
        return a is not None and b is not None and a != b and LAYERS[b] <= LAYERS[a]

    assert not _edges(upward), "imports that go up or sideways between layers:\n  " + "\n  ".join(_edges(upward))


def test_the_client_library_and_chat_formats_never_import_the_server():
    def into_server(src: str, dst: str) -> bool:
        return not src.startswith("deployments") and (dst == "deployments" or dst.startswith("deployments."))

    assert not _edges(into_server), _edges(into_server)


def _imports_package(dst: str, package: str) -> bool:
    return dst == package or dst.startswith(package + ".")


def test_only_the_engine_imports_vllm_and_only_its_seam_the_private_surface():
    outside = _edges(lambda s, d: _imports_package(d, "vllm") and _unit(s) != "deployments.engine"
                     and s.startswith("deployments"))
    assert not outside, f"vLLM imported outside deployments/engine/: {outside}"
    private = _edges(lambda s, d: _imports_package(d, "vllm") and d not in VLLM_PUBLIC and s != VLLM_PRIVATE_SEAM)
    assert not private, f"vLLM's private modules imported outside {VLLM_PRIVATE_SEAM}: {private}"


def test_only_serves_private_seam_touches_serves_private_surface():
    private = _edges(lambda s, d: _imports_package(d, "ray.serve._private") and s != SERVE_PRIVATE_SEAM)
    assert not private, f"Serve's private surface imported outside {SERVE_PRIVATE_SEAM}: {private}"


def test_only_the_ingress_and_the_gate_import_starlette():
    allowed = ("deployments.ingress", "deployments.proxy_gate")
    outside = _edges(lambda s, d: _imports_package(d, "starlette") and _unit(s) not in allowed)
    assert not outside, f"Starlette imported outside the ingress and the proxy gate: {outside}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_the_projects_modules():
    graph = {src: {d for d in dsts if d in MODULES and d != src} for src, dsts in IMPORTS.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"p": {"p.x"}, "p.x": {"p"}}, [["p", "p.x"]]),  # a plug-in importing its registry's package
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycles(graph) == expected


def test_an_import_of_ones_own_package_is_an_edge_to_its_init(tmp_path):
    assert "deployments.routing.policy" in IMPORTS["deployments.routing"]
    assert _unit("deployments.engine.simulated.engine") == "deployments.engine"
