"""The package imports only downward, in the order of the Architecture page's table
(docs/architecture.md), and no two modules import each other in a circle — counting imports inside
functions, which execute too. Training (``engine``) uses the inference core and the pictures, never
export, benchmarking or sharing code. Below the command line, effdetseg's own modules are imported
at the top of a module, where a reader sees them. The model registry imports no model module (the
modules register into it)."""
from __future__ import annotations

import ast
from pathlib import Path
from conftest import REPO

PACKAGE = REPO / "src" / "effdetseg"

# Each package may import those of its own level and below.
ORDER: tuple[tuple[str, ...], ...] = (
    ("effdetseg.errors", "effdetseg.devices", "effdetseg._version"),
    ("effdetseg.layers", "effdetseg.models"),
    ("effdetseg.io",),
    ("effdetseg.configs",),
    ("effdetseg.data",),
    ("effdetseg.pictures",),
    ("effdetseg.inference",),
    ("effdetseg.engine",),
    ("effdetseg.export",),
    ("effdetseg.benchmarking",),
    ("effdetseg.sharing",),
    ("effdetseg.commands",),
    ("effdetseg", "effdetseg.cli", "effdetseg.__main__"),
)


# What only a trained model's users need: training never imports it, not even indirectly.
NOT_FOR_TRAINING = ("effdetseg.export", "effdetseg.benchmarking", "effdetseg.sharing", "effdetseg.commands")
# The entry points import each command's modules when it runs (so `effdetseg --help` stays fast).
LAZY_IMPORTERS = ("effdetseg.commands", "effdetseg.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(name: str, top_level_only: bool = False) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in the file (lazy imports too; with
    ``top_level_only``, those outside functions): ``from .x import y`` counts as ``x.y`` when that
    is a module, else as ``x``."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8")), top_level_only):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{prefix}.{alias.name}"
                found.add(candidate if candidate in MODULES else prefix)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


def _nodes(tree: ast.AST, top_level_only: bool) -> list[ast.AST]:
    """Every node of ``tree``; with ``top_level_only``, none inside a function or method."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        todo.extend(c for c in ast.iter_child_nodes(node)
                    if not (top_level_only and isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef))))
    return found


GRAPH = {name: imported_modules(name) for name in MODULES}


def level(module: str) -> int:
    """The index in ORDER of the longest prefix that names ``module``'s package."""
    matches = [(len(prefix), i) for i, group in enumerate(ORDER) for prefix in group
               if module == prefix or (prefix != "effdetseg" and module.startswith(prefix + "."))]
    assert matches, f"{module} belongs to no layer of ORDER: add its package there"
    return max(matches)[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_packages_import_only_downward() -> None:
    upward = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps if level(d) > level(m))
    assert not upward, "\n".join(upward)


def test_no_import_circle_between_modules() -> None:
    assert not cycles(GRAPH), cycles(GRAPH)


def test_the_cycle_finder_finds_a_circle_through_a_lazy_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_model_registry_imports_no_model_module() -> None:
    assert not {m for m in GRAPH["effdetseg.models.registry"] if m.startswith("effdetseg.models.")}
    assert "effdetseg.models.registry" in GRAPH["effdetseg.models.classifier"]



def reachable(module: str) -> set[str]:
    """Every module ``module`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for dependency in GRAPH[todo.pop()] - seen:
            seen.add(dependency)
            todo.append(dependency)
    return seen


def test_training_imports_only_the_inference_core_and_the_pictures() -> None:
    engine = [m for m in MODULES if m.startswith("effdetseg.engine")]
    assert engine and any("effdetseg.inference.segment" in GRAPH[m] for m in engine)
    found = sorted(f"{m} reaches {d}" for m in engine for d in reachable(m) if d.startswith(NOT_FOR_TRAINING))
    assert not found, "\n".join(found)
    used = {d.split(".")[1] for m in engine for d in GRAPH[m] if level(d) > level("effdetseg.data")}
    assert used <= {"engine", "inference", "pictures"}, used


def test_library_modules_import_effdetseg_at_the_top() -> None:
    lazy = sorted(
        f"{m} imports {sorted(GRAPH[m] - imported_modules(m, top_level_only=True))} inside a function"
        for m in MODULES
        if not m.startswith(LAZY_IMPORTERS) and GRAPH[m] - imported_modules(m, top_level_only=True)
    )
    assert not lazy, "\n".join(lazy)
