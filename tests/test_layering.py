"""Layering rules: which parts of hubd may import which, and that no import runs in a circle.

``daemon/`` is drawn as the README's architecture: the composition root (``app.py``,
``services.py``, the CLI and their start-up guards) knows everything; the shared vocabulary
(``config``, ``errors``, ``model``, ``ports``, ``gcpause``) is known by everything; each
capability package (``replenishment/``, ``outbox/``, ``scheduling/``, ``observability/``, the
connectors, ``store/``, ``sandbox/``) and the control plane (``control/``) import only what
``ALLOWED`` below grants them. The import graph is read from the source (every ``import``,
including those under ``TYPE_CHECKING`` and inside functions), so a dependency that exists only
for type hints still counts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.test_planner_purity import imported_modules

REPO = Path(__file__).resolve().parent.parent
IO_ROOTS = ("aiohttp", "grpc", "aiosqlite", "sqlite3")

#: Top-level modules every part may import: the hub's shared vocabulary.
SHARED = {
    "daemon",
    "daemon.config",
    "daemon.errors",
    "daemon.model",
    "daemon.ports",
    "daemon.gcpause",
}
#: The packages under daemon/ and, for each, the other packages it may import ("shared" is the
#: vocabulary above). Anything else at the top of daemon/ is the composition root, which may
#: import everything and which no package imports.
ALLOWED: dict[str, set[str]] = {
    "shared": set(),
    "store": {"shared"},
    "onec": {"shared"},
    "moysklad": {"shared"},
    "sandbox": {"shared"},
    "observability": {"shared", "store"},
    "outbox": {"shared", "store"},
    "scheduling": {"shared", "store"},
    "replenishment": {"shared", "store"},
    "control": {"shared", "store", "observability", "replenishment", "scheduling"},
}
#: The one way down from the shared vocabulary: HubConfig is made of the connectors' sections.
SHARED_MAY_IMPORT = {"daemon.onec.settings", "daemon.moysklad.settings"}
CONTROL_PLANE = "control"
ROOT = "composition root"


# ---- the import graph ------------------------------------------------------------------------


def module_files(package_dir: Path) -> dict[str, Path]:
    """Every module of the package at ``package_dir`` (a package is named by its __init__)."""
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported_modules(name: str, path: Path, modules: Iterable[str]) -> set[str]:
    """The modules among ``modules`` that the module ``name`` at ``path`` imports."""
    known = set(modules)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # "from pkg import sub" imports the module pkg.sub; "from pkg import name", pkg
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return (found & known) - {name}


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports."""
    files = module_files(package_dir)
    return {name: _imported_modules(name, path, files) for name, path in files.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def part_of(module: str, package_dir: Path) -> str:
    """The package under daemon/ a module belongs to, "shared" or the composition root."""
    if module in SHARED:
        return "shared"
    parts = module.split(".")
    if len(parts) > 1 and (package_dir / parts[1]).is_dir():
        return parts[1]
    return ROOT


def package_edges(package_dir: Path) -> set[tuple[str, str, str, str]]:
    """(part, imported part, module, imported module) for every import across parts."""
    edges = set()
    for module, targets in import_graph(package_dir).items():
        for target in targets:
            source_part, target_part = part_of(module, package_dir), part_of(target, package_dir)
            if source_part != target_part:
                edges.add((source_part, target_part, module, target))
    return edges


# ---- the rules -------------------------------------------------------------------------------


def test_no_modules_import_each_other() -> None:
    """No import circle in daemon/, of two modules or more, even one closed only under
    TYPE_CHECKING: every dependency runs one way."""
    graph = import_graph(REPO / "daemon")
    assert "daemon.services" in graph["daemon.app"]  # the graph is read, not empty
    assert cycles(graph) == []


def test_capabilities_never_import_the_composition_root_or_the_control_plane() -> None:
    """No package under daemon/ imports app.py, services.py or another composition-root
    module, and only the composition root imports control/: what a part needs is passed in,
    or stated as a Protocol it depends on."""
    wrong = sorted(
        (module, target)
        for source, target_part, module, target in package_edges(REPO / "daemon")
        if source != ROOT and target_part in (ROOT, CONTROL_PLANE)
    )
    assert wrong == []


def test_packages_import_only_what_the_architecture_allows() -> None:
    """Every import across daemon/'s parts is one ``ALLOWED`` grants (the composition root
    may import everything; the shared vocabulary only the connectors' settings)."""
    daemon_dir = REPO / "daemon"
    packages = {p.name for p in daemon_dir.iterdir() if (p / "__init__.py").exists()}
    assert packages == ALLOWED.keys() - {"shared"}, "a new package needs its row in ALLOWED"
    wrong = sorted(
        (module, target)
        for source, target_part, module, target in package_edges(daemon_dir)
        if source != ROOT
        and target_part not in ALLOWED[source]
        and not (source == "shared" and target in SHARED_MAY_IMPORT)
    )
    assert wrong == []


def test_the_checker_sees_type_checking_and_relative_imports(tmp_path: Path) -> None:
    """A circle closed by a TYPE_CHECKING import, a relative one or a "from pkg import mod"
    is found; a package importing its own submodules is not a circle."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from pkg import b\nA = 1\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n"
    )
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from . import d\n")
    (pkg / "sub" / "d.py").write_text("from .. import sub\nfrom ..sub.c import x\n")
    (pkg / "e.py").write_text("import pkg.sub.c\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.d"] == {"pkg.sub", "pkg.sub.c"}
    assert graph["pkg.e"] == {"pkg.sub.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.sub.c", "pkg.sub.d"]]


# ---- rules about libraries -------------------------------------------------------------------


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
