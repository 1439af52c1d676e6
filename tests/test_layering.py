"""The package imports only downward, in the order the README's Architecture table gives, and no
two modules import each other in a circle — counting imports inside functions, which execute too.
The model registry imports no model module (the modules register into it)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "effdetseg"

# Each package may import those of its own level and below.
ORDER: tuple[tuple[str, ...], ...] = (
    ("effdetseg.errors", "effdetseg.devices", "effdetseg._version"),
    ("effdetseg.layers", "effdetseg.models"),
    ("effdetseg.io",),
    ("effdetseg.configs",),
    ("effdetseg.data",),
    ("effdetseg.deploy",),
    ("effdetseg.engine",),
    ("effdetseg.commands",),
    ("effdetseg", "effdetseg.cli", "effdetseg.__main__"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(name: str) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in the file (lazy imports too):
    ``from .x import y`` counts as ``x.y`` when that is a module, else as ``x``."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{prefix}.{alias.name}"
                found.add(candidate if candidate in MODULES else prefix)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


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
