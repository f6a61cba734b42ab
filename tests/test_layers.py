"""The package's layering, checked from its source: dependencies point down, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "darkroom"
BELOW_THE_API = ["callbacks", "tasks", "worker", "storage", "engine", "db", "billing",
                 "accounts", "moderation", "maintenance.py", "clock.py"]  # fmt: skip


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("part", BELOW_THE_API)
def test_nothing_below_the_api_imports_it(part: str) -> None:
    root = SRC / part
    for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
        upward = {m for m in _imports(path) if m == "darkroom.api" or m.startswith("darkroom.api.")}
        assert not upward, f"{path.relative_to(SRC)} imports {sorted(upward)}"


def test_a_module_over_400_lines_says_why_at_its_top() -> None:
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text().splitlines()
        if len(lines) > 400:
            docstring = ast.get_docstring(ast.parse("\n".join(lines))) or ""
            assert "400 lines" in docstring, f"{path.relative_to(SRC)}: {len(lines)} lines"
