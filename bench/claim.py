"""What a claim costs when accounts take turns, against the oldest-first claim, in one run.

Fills a scratch database with `--waiting` pending tasks of `--accounts` accounts (interleaved,
as many accounts' clients would queue them), then times `--repeat` claims of one task each
(each completed at once, so the queue stays as deep) both ways: darkroom's claim
(`TaskStore.claim`: the least recently served account's oldest task leads) and the baseline,
the oldest pending task's batch, in one statement as darkroom claimed before accounts took
turns. Prints the median ms per claim each way and their ratio.

    python bench/claim.py
    python bench/claim.py --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, insert, select, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.database import scratch_database
from darkroom.accounts.store import AccountStore
from darkroom.clock import utcnow
from darkroom.contract import Quality, Status, new_task_id, pixel_size
from darkroom.db.database import Database
from darkroom.db.migrate import upgrade
from darkroom.db.schema import tasks
from darkroom.tasks.model import Claim, NewTask, Task
from darkroom.tasks.store import TaskStore

MODEL = "krea-2-turbo"


async def fill(db: Database, waiting: int, accounts: int) -> None:
    store = AccountStore(db)
    ids = []
    for n in range(accounts):
        account = await store.create_account(f"bench-{n}", credits_micro=10**15)
        info, _ = await store.create_key(account.name)
        ids.append((account.id, info.id))
    width, height = pixel_size("1:1", Quality.K1)
    start = utcnow()
    rows = []
    for n in range(waiting):
        account_id, key_id = ids[n % accounts]
        created = start + timedelta(microseconds=n)
        new = NewTask(
            id=f"{new_task_id(int(created.timestamp()))}{n}",
            account_id=account_id,
            api_key_id=key_id,
            model=MODEL,
            prompt="p",
            size="1:1",
            quality=Quality.K1,
            width=width,
            height=height,
            seed=1,
            nsfw_check=False,
            callback_url=None,
            link_base=None,
            price_micro=450_000,
            estimated_time=10,
            created_at=created,
            trace_parent=None,
        )
        rows.append(new.row_values())
    async with db.transaction() as conn:
        await conn.execute(insert(tasks), rows)


async def oldest_first(db: Database, worker_id: str, lease_s: float) -> list[Task]:
    """The baseline: the oldest pending task's batch key, its oldest tasks."""
    now = utcnow()
    pending = tasks.c.status == Status.PENDING.value
    oldest_key = (
        select(tasks.c.batch_key)
        .where(pending, tasks.c.model.in_([MODEL]))
        .order_by(tasks.c.created_at, tasks.c.id)
        .limit(1)
        .scalar_subquery()
    )
    pick = (
        select(tasks.c.id)
        .where(pending, tasks.c.batch_key == oldest_key)
        .order_by(tasks.c.created_at, tasks.c.id)
        .limit(1)
    )
    if db.dialect == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    picked = pick.cte("picked")
    stmt = (
        update(tasks)
        .where(tasks.c.id.in_(select(picked.c.id)), pending)
        .values(
            status=Status.PROCESSING.value,
            attempt=tasks.c.attempt + 1,
            worker_id=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_s),
            started_at=func.coalesce(tasks.c.started_at, now),
            progress=0,
        )
        .returning(*tasks.c)
    )
    rows = await db.write(lambda conn: conn.execute(stmt).all())
    return [Task.from_row(r) for r in rows]


async def time_claims(db: Database, repeat: int, *, in_turn: bool) -> float:
    store = TaskStore(db)
    walls = []
    for _ in range(repeat):
        started = time.perf_counter()
        if in_turn:
            claimed = await store.claim("bench", limit=1, lease_s=60, models=[MODEL])
        else:
            claimed = await oldest_first(db, "bench", 60)
        walls.append(time.perf_counter() - started)
        [task] = claimed
        await store.complete(Claim(task.id, task.attempt), ["k.png"])
    return 1000 * statistics.median(walls)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument(
        "--postgres", metavar="DSN", help="a PostgreSQL server's admin DSN (default: SQLite)"
    )
    args = parser.parse_args()
    results = {}
    for way, in_turn in (("oldest first", False), ("accounts in turn", True)):
        async with scratch_database(args.postgres) as url:
            db = Database(url)
            try:
                await upgrade(db)
                await fill(db, args.waiting, args.accounts)
                results[way] = await time_claims(db, args.repeat, in_turn=in_turn)
            finally:
                await db.dispose()
    print(
        f"{url.split(':')[0]}: {args.waiting} waiting of {args.accounts} accounts, "
        f"{args.repeat} claims each; median ms per claim"
    )
    base = results["oldest first"]
    for way, ms in results.items():
        print(f"{way:18} {ms:7.2f} ms  {ms / base:5.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
