"""The package's layering, checked from its source: dependencies point down, modules stay small.

From the bottom: the leaves (`contract`, `errors`, `clock`, `attention_backends`, and `wire`,
the request and task bodies, on `contract`), then
`settings`; `db`; the stores and components that hold no task (`storage`, `billing`,
`accounts`, `engine`, `moderation`); the table layer (`tasks`: the task table as a queue, the
workers table, the callback outbox, statistics, rendering a task); the use cases (`service`)
and the callback sender (`callbacks`); the roles that run them (`worker`, `maintenance`); and
the edges (`api`, `cli`). Every rule below is one of those arrows; a planted upward import
breaks the test (the last test plants one and watches the rules catch it).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "darkroom"

# package (a folder, or a module without .py) -> the packages it must never import ("*": any
# package, but those named "!package")
FORBIDDEN: dict[str, set[str]] = {
    "contract": {"*"},
    "errors": {"*"},
    "clock": {"*"},
    "metrics": {"*"},
    "tracing": {"*"},
    "attention_backends": {"*"},
    "wire": {"*", "!contract"},
    "settings": {"*", "!contract", "!attention_backends"},
    "db": {"storage", "billing", "accounts", "engine", "moderation", "tasks", "service",
           "callbacks", "worker", "maintenance", "api", "cli"},
    "storage": {"db", "billing", "accounts", "engine", "moderation", "tasks", "service",
                "callbacks", "worker", "maintenance", "api", "cli"},
    "billing": {"storage", "accounts", "engine", "moderation", "tasks", "service", "callbacks",
                "worker", "maintenance", "api", "cli"},
    "accounts": {"storage", "engine", "moderation", "tasks", "service", "callbacks", "worker",
                 "maintenance", "api", "cli"},
    "engine": {"db", "storage", "billing", "accounts", "moderation", "tasks", "service",
               "callbacks", "worker", "maintenance", "api", "cli"},
    "moderation": {"db", "storage", "billing", "accounts", "engine", "tasks", "service",
                   "callbacks", "worker", "maintenance", "api", "cli"},
    "tasks": {"accounts", "engine", "moderation", "service", "callbacks", "worker",
              "maintenance", "api", "cli"},
    "callbacks": {"service", "worker", "maintenance", "api", "cli"},
    "service": {"worker", "maintenance", "api", "cli"},
    "worker": {"service", "callbacks", "maintenance", "api", "cli"},
    "maintenance": {"service", "worker", "api", "cli"},
    "api": {"cli"},
}  # fmt: skip


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _package_of(name: str) -> str | None:
    """`darkroom.tasks.store` -> `tasks`; None for anything outside darkroom."""
    parts = name.split(".")
    return parts[1] if parts[0] == "darkroom" and len(parts) > 1 else None


def package_imports(src: Path) -> dict[str, dict[str, set[str]]]:
    """package -> imported package -> the files (relative to `src`) that import it; lazy
    imports inside functions count as much as those at the top."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in sorted(src.rglob("*.py")):
        relative = path.relative_to(src)
        package = relative.parts[0].removesuffix(".py")
        for name in _imports(path):
            target = _package_of(name)
            if target is not None and target != package:
                graph.setdefault(package, {}).setdefault(target, set()).add(str(relative))
    return graph


def broken_rules(src: Path) -> list[str]:
    graph = package_imports(src)
    broken = []
    for package, forbidden in FORBIDDEN.items():
        for target, files in sorted(graph.get(package, {}).items()):
            if target in forbidden or ("*" in forbidden and f"!{target}" not in forbidden):
                broken.append(f"{package} imports {target} ({', '.join(sorted(files))})")
    return broken


def import_loops(src: Path) -> list[str]:
    """Every pair of packages that import each other, directly or through others."""
    graph = {p: set(targets) for p, targets in package_imports(src).items()}

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))
        return False

    return sorted(
        f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and reaches(b, a)
    )  # fmt: skip


def test_every_package_is_in_a_layer() -> None:
    packages = {p.name.removesuffix(".py") for p in SRC.iterdir() if not p.name.startswith("_")}
    packages -= {"py.typed", "testing", "logging", "client", "client_command", "cli"}
    packages = {p for p in packages if (SRC / p).is_dir() or (SRC / f"{p}.py").is_file()}
    assert packages <= set(FORBIDDEN), sorted(packages - set(FORBIDDEN))


def test_dependencies_point_down() -> None:
    assert broken_rules(SRC) == []


def test_no_package_import_loops() -> None:
    assert import_loops(SRC) == []


def test_storage_writes_no_database_rows() -> None:
    for path in sorted((SRC / "storage").rglob("*.py")):
        assert not {m for m in _imports(path) if m.startswith(("sqlalchemy", "darkroom.db"))}, path


def test_the_client_sdk_needs_nothing_of_the_server() -> None:
    for path in sorted((SRC / "client").rglob("*.py")):
        server = {m for m in _imports(path) if _package_of(m) not in (None, "client")}
        assert not server, f"{path.relative_to(SRC)} imports {sorted(server)}"


@pytest.mark.parametrize(
    ("file", "planted", "caught"),
    [
        ("tasks/store.py", "from darkroom.service.submit import Submitter", "tasks imports"),
        ("settings.py", "from darkroom.storage.base import ResultStorage", "settings imports"),
        ("storage/local.py", "from darkroom.db.database import Database", "storage imports"),
        ("tasks/stats.py", "from darkroom.api import app", "tasks imports api"),
    ],
)
def test_a_planted_upward_import_is_caught(
    tmp_path: Path, file: str, planted: str, caught: str
) -> None:
    copy = tmp_path / "darkroom"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / file
    target.write_text(target.read_text() + f"\n{planted}\n")
    assert any(caught in rule for rule in broken_rules(copy)), broken_rules(copy)


def test_a_planted_loop_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "darkroom"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "db" / "database.py").write_text(
        (copy / "db" / "database.py").read_text() + "\nfrom darkroom.tasks import store\n"
    )
    assert "db <-> tasks" in import_loops(copy)


def test_a_module_over_400_lines_says_why_at_its_top() -> None:
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text().splitlines()
        if len(lines) > 400:
            docstring = ast.get_docstring(ast.parse("\n".join(lines))) or ""
            assert "400 lines" in docstring, f"{path.relative_to(SRC)}: {len(lines)} lines"
