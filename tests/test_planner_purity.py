"""The planner stays a pure computation: no I/O library is imported by it or through it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import daemon

PLANNER_MODULES = ("replenishment/plan.py", "replenishment/planner.py", "replenishment/reasons.py")
ALLOWED_IMPORTS = {
    "__future__",
    "collections.abc",
    "dataclasses",
    "decimal",
    "operator",
    "typing",
    "daemon.errors",
    "daemon.model",
    "daemon.replenishment.plan",
    "daemon.replenishment.reasons",
}
FORBIDDEN_ROOTS = ("aiohttp", "grpc", "aiosqlite", "sqlite3", "structlog", "asyncio")


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
    return found


def test_planner_modules_import_only_pure_modules() -> None:
    """replenishment/plan.py, planner.py and reasons.py import only the standard library's pure
    modules and the hub's domain types."""
    package = Path(daemon.__file__).parent
    for name in PLANNER_MODULES:
        extra = imported_modules(package / name) - ALLOWED_IMPORTS
        assert not extra, f"{name} imports {sorted(extra)}"


def test_importing_the_planner_loads_no_io_library() -> None:
    """A fresh interpreter that imports daemon.replenishment.planner has no I/O library loaded."""
    probe = (
        "import sys, daemon.replenishment.planner;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_ROOTS!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(daemon.__file__).parent.parent,
        timeout=30,
    )
    assert result.stdout.strip() == "[]"
