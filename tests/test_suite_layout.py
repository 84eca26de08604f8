"""The test suite's own layout: shared helpers live in helper modules, never in a test module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .x import y`, `from . import test_x`
                base = ".".join((*package[: len(package) - node.level + 1], *([node.module] if node.module else [])))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_no_module_imports_a_test_module() -> None:
    """A helper that two test modules need goes to a helper module (tests/helpers.py, tests/api_server.py,
    tests/integration/controllers.py, pools.py, tasks.py, tests/core/scenes.py, ...): importing a test module runs its module-level
    code and makes the collection of one depend on the other."""
    offenders = [f"{path.relative_to(ROOT)} imports {module}" for path in CHECKED
                 for module in sorted(_imported_modules(path)) if module.split(".")[-1].startswith("test_")]
    assert not offenders, "\n".join(offenders)
