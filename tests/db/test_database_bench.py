"""bench/database.py runs (a few calls each way), so the figures docs/performance.md quotes can
be measured again: a store change that breaks the benchmark fails here, not months later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_database_benchmark_runs_every_operation_each_way() -> None:
    out = subprocess.run(
        [sys.executable, "bench/database.py", "--repeat", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = [line for line in out.splitlines() if " cpu " in line]
    names = [row.split("  ")[0] for row in rows]
    assert names == [
        "authenticate (read)",
        "task get (read)",
        "queue snapshot (read)",
        "create (write)",
        "create+claim+complete",
    ]
    assert all(row.count(" cpu ") == 3 for row in rows)  # darkroom, threads only, aiosqlite
