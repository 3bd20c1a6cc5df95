"""The import graph of `study`, `baselines` and `analysis` points one way (README, Layout).

Read with `ast`, so imports inside functions count as much as those at the top of a file:
- no cycle among the modules of the three packages;
- `study` never imports `baselines` (the baselines register through the `study.methods` entry point);
- `analysis` reads the store and imports nothing of `study` but the tracking schema (`study.schema`).
"""
from __future__ import annotations

import ast

from conftest import REPO

PACKAGES = ("study", "baselines", "analysis")
ANALYSIS_MAY_IMPORT = {"study.schema"}


def _module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, object]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imports(name: str, path, known: set[str]) -> set[str]:
    """The project modules `name` imports: each `import a.b` / `from a.b import c` resolved to the most
    specific module of the project it names (`from a import b` names the module a.b if there is one)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_imports_inside_functions():
    edges = graph()
    assert "study.train" in edges["study.runner"]
    assert "study.data.cifar" in edges["study.tasks.cifar10"]  # imported inside a method


def test_the_import_graph_has_no_cycle():
    cycle = _cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_study_never_imports_baselines():
    wrong = sorted(f"{m} -> {t}" for m, ts in graph().items() if m.split(".")[0] == "study"
                   for t in ts if t.split(".")[0] == "baselines")
    assert not wrong, wrong


def test_analysis_imports_nothing_of_study_but_the_tracking_schema():
    wrong = sorted(f"{m} -> {t}" for m, ts in graph().items() if m.split(".")[0] == "analysis"
                   for t in ts if t.split(".")[0] == "study" and t not in ANALYSIS_MAY_IMPORT)
    assert not wrong, wrong
