"""The package imports only downward: deploy/ never imports engine/, and the model registry imports
no model module (the modules register into it)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "effdetseg"


def imported_modules(path: Path) -> set[str]:
    """Relative and absolute effdetseg imports of one file, anywhere in it (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_deploy_does_not_import_engine() -> None:
    for path in sorted((PACKAGE / "deploy").glob("*.py")):
        offending = {m for m in imported_modules(path) if m.startswith("..engine") or m.startswith("effdetseg.engine")}
        assert not offending, f"{path.name} imports {offending}"


def test_model_registry_imports_no_model_module() -> None:
    imports = imported_modules(PACKAGE / "models" / "registry.py")
    assert not {m for m in imports if m.startswith(".")}, imports
    assert ".registry" in imported_modules(PACKAGE / "models" / "classifier.py")
