"""bench/database.py and bench/claim.py run (a few calls each way), so the figures the docs
quote can be measured again: a store change that breaks a benchmark fails here, not months
later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Starts processes (`make unit` leaves it out).
pytestmark = pytest.mark.process

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


@pytest.mark.slow
def test_the_load_driver_runs_drains_and_audits() -> None:
    """bench/load.py against `serve`, briefly: every kind of request is made and counted, and
    the audit after the drain passes (its exit status)."""
    out = subprocess.run(
        [
            sys.executable, "bench/load.py", "--topology", "serve", "--duration", "3",
            "--keys", "2", "--max-concurrent", "1", "--pollers", "1", "--streams", "2",
            "--drain", "120",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    kinds = {line.split(" | ")[0].removeprefix("| ") for line in out.splitlines() if "| " in line}
    assert {"create", "create (greedy key)", "poll", "event stream"} <= kinds, out
    assert "; OK" in out, out
