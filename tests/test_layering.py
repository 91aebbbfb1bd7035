"""Layering rules of STYLE.md: the run logic imports no I/O library directly, and hubctl
imports only the generated API package and its own code."""

from __future__ import annotations

from pathlib import Path

from tests.test_planner_purity import imported_modules

REPO = Path(__file__).resolve().parent.parent
IO_ROOTS = ("aiohttp", "grpc", "aiosqlite", "sqlite3")


def _roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def test_run_logic_imports_no_io_library() -> None:
    """The run logic (replenishment/) reaches 1C, МойСклад and SQLite only through the hub's
    own interfaces (ports, store functions), never through aiohttp, grpc or aiosqlite."""
    names = (
        "replenishment/runs.py",
        "replenishment/run_job.py",
        "replenishment/inputs.py",
        "replenishment/planner.py",
        "ports.py",
        "model.py",
    )
    for name in names:
        roots = _roots(REPO / "daemon" / name)
        assert not roots & set(IO_ROOTS), (name, roots & set(IO_ROOTS))


def test_client_imports_only_the_api_package_and_itself() -> None:
    """client/ depends on grpc, the generated protos package and the standard library only."""
    for path in (REPO / "client").glob("*.py"):
        modules = imported_modules(path)
        assert not any(m == "daemon" or m.startswith("daemon.") for m in modules), path
        third_party = {m.split(".")[0] for m in modules} - {
            "__future__", "argparse", "csv", "json", "os", "sys", "unicodedata", "datetime",
            "dataclasses", "pathlib", "typing", "collections", "decimal",
            "client", "protos", "grpc", "grpc_health", "google",
        }  # fmt: skip
        assert not third_party, (path, third_party)
