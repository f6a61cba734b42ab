"""bench/database.py and bench/claim.py run (a few calls each way), so the figures the docs
quote can be measured again: a store change that breaks a benchmark fails here, not months
later."""

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


def test_the_claim_benchmark_times_both_claims() -> None:
    out = subprocess.run(
        [sys.executable, "bench/claim.py", "--waiting", "40", "--accounts", "4", "--repeat", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = [line.split("  ")[0] for line in out.splitlines() if line.endswith("x")]
    assert rows == ["oldest first", "accounts in turn"]
