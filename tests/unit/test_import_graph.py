"""The architecture, kept true: imports point down the layers, no module cycles, small folders.

Layers, lowest first: `schemas` (the wire contract), `common` (plumbing both sides share),
`daemon` (the edge), `control` (the control plane). A module imports only its own layer or
lower ones; the control plane's service never imports the operator's tool (`control.cli`), the
dev stack (`control.devstack`) or the fleet simulator (`control.sim`). Imports inside functions
count too: they hide cycles.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"schemas": 0, "common": 1, "daemon": 2, "control": 3}
TOOLS = ("control.cli", "control.devstack", "control.sim")
MAX_MODULES_PER_FOLDER = 20


def _modules() -> dict[str, Path]:
    found = {}
    for top in LAYERS:
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules `name` imports (a `from pkg import mod` names the module itself)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    out.add(f"{base}.{alias.name}")
                elif base in MODULES:
                    out.add(base)
    out.discard(name)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> int:
    return LAYERS[name.split(".", 1)[0]]


def _is_tool(name: str) -> bool:
    return any(name == t or name.startswith(t + ".") for t in TOOLS)


def test_imports_point_down() -> None:
    upward = sorted(
        f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps if _layer(b) > _layer(a)
    )
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_service_does_not_import_the_tools() -> None:
    wrong = sorted(
        f"{a} -> {b}"
        for a, deps in GRAPH.items()
        if a.startswith("control") and not _is_tool(a) and a not in ("control", "control.__main__")
        for b in deps
        if _is_tool(b)
    )
    assert not wrong, "the service imports a tool:\n" + "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    # A package's __init__ re-exporting its modules is not a cycle of design.
    graph = {
        a: {b for b in deps if not (MODULES[b].name == "__init__.py" and a.startswith(b + "."))}
        for a, deps in GRAPH.items()
    }
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_folders_stay_small() -> None:
    per_folder: dict[Path, int] = defaultdict(int)
    for path in MODULES.values():
        if path.name != "__init__.py":
            per_folder[path.parent.relative_to(ROOT)] += 1
    crowded = {str(p): n for p, n in per_folder.items() if n > MAX_MODULES_PER_FOLDER}
    assert crowded == {}
