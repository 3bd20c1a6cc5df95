"""The import graph of `study`, `baselines` and `analysis` points one way (README, Layout).

Read with `ast`, so imports inside functions count as much as those at the top of a file:
- no cycle among the modules of the three packages;
- `study` never imports `baselines` (the baselines register through the `study.methods` entry point);
- `analysis` imports nothing of `study` but the store contract (`study.schema`);
- `study`'s layers point one way, `cli -> runner/grid -> train -> methods -> models / nn layers`: no
  module imports a module of a layer above its own (`LAYERS`; a module in no layer, such as `env`,
  `schema`, `accounting` or `bench`, is not constrained);
- `tasks -> data`: a task imports nothing of the layers above the models, the data nothing of the
  tasks either.
"""
from __future__ import annotations

import ast

from conftest import REPO

PACKAGES = ("study", "baselines", "analysis")
ANALYSIS_MAY_IMPORT = {"study.schema"}
# study's layers, top first; a name stands for the module and every module under it
LAYERS = [("cli", ("study.cli", "study.__main__")),
          ("runner/grid", ("study.runner", "study.grid")),
          ("train", ("study.train", "study.recipe")),
          ("methods", ("study.methods",)),
          ("models / nn layers", ("study.models", "study.csg", "study.surgery"))]
ABOVE_MODELS = len(LAYERS) - 1  # the layers a task or the data may not import: all but the models'


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


def _layer(module: str) -> int | None:
    """The index in `LAYERS` of the layer `module` belongs to, or None."""
    for i, (_, names) in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_layers_of_study_point_one_way():
    wrong = sorted(f"{m} ({LAYERS[_layer(m)][0]}) -> {t} ({LAYERS[_layer(t)][0]})" for m, ts in graph().items()
                   if _layer(m) is not None for t in ts if _layer(t) is not None and _layer(t) < _layer(m))
    assert not wrong, wrong


def test_tasks_import_only_data_below_them_and_the_data_no_task():
    edges = graph()
    assert "study.data.cifar" in edges["study.tasks.cifar10"]  # the rule below is about real edges
    wrong = sorted(f"{m} -> {t}" for m, ts in edges.items() if _under(m, "study.tasks") or _under(m, "study.data")
                   for t in ts if (_layer(t) is not None and _layer(t) < ABOVE_MODELS)
                   or (_under(m, "study.data") and _under(t, "study.tasks")))
    assert not wrong, wrong
