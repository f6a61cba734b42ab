"""Ledger movements, each run inside the caller's transaction with the task change it pays for.

A create reserves the price (the account's balance and the key's allowance go down); completing
captures it (it becomes `used`); failing releases it (the balance comes back). The ledger's
unique (task, kind) and settled-once constraints make a second capture or release of one task
fail its whole transaction, so money can never move twice, whatever a worker or rescuer does.
The balance and the key's limit are checked by the UPDATE itself (`WHERE balance >= price`),
which row-locks on PostgreSQL and runs under SQLite's single writer: no read-then-write race.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, bindparam, insert, or_, select, update

from darkroom.db.schema import accounts, api_keys, ledger, tasks
from darkroom.errors import InsufficientQuota

# Statements creates run are built once, their values bound per call: building one per call
# cost more than SQLite took to run it.
_INSERT = insert(ledger)
_price = bindparam("price_micro", type_=api_keys.c.spent_micro.type)
_TAKE_FROM_KEY = (
    update(api_keys)
    .where(
        api_keys.c.id == bindparam("key_id"),
        or_(
            api_keys.c.credit_limit_micro.is_(None),
            api_keys.c.spent_micro + _price <= api_keys.c.credit_limit_micro,
        ),
    )
    .values(spent_micro=api_keys.c.spent_micro + _price)
)
_TAKE_FROM_ACCOUNT = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"), accounts.c.balance_micro >= _price)
    .values(balance_micro=accounts.c.balance_micro - _price)
)


def reserve(
    conn: Connection,
    *,
    task_id: str,
    account_id: int,
    api_key_id: int,
    price_micro: int,
    model: str,
    quality: str,
    now: datetime,
) -> None:
    """Hold the task's price; InsufficientQuota (and the caller's rollback) when it is not there.

    Rows are taken key first, then account, in every transaction that moves money for a task.
    """
    allowed = conn.execute(_TAKE_FROM_KEY, {"key_id": api_key_id, "price_micro": price_micro})
    if allowed.rowcount != 1:
        raise InsufficientQuota("Insufficient credits: this key's credit limit is below the price")
    taken = conn.execute(_TAKE_FROM_ACCOUNT, {"account": account_id, "price_micro": price_micro})
    if taken.rowcount != 1:
        raise InsufficientQuota("Insufficient credits: the account's balance is below the price")
    conn.execute(
        _INSERT,
        {
            "account_id": account_id,
            "api_key_id": api_key_id,
            "task_id": task_id,
            "kind": "reserve",
            "amount_micro": price_micro,
            "model": model,
            "quality": quality,
            "created_at": now,
        },
    )


def settle(conn: Connection, task_id: str, *, capture: bool, now: datetime) -> None:
    """Capture (completed) or release (failed) the task's reservation, exactly once."""
    row = (
        conn.execute(
            select(
                tasks.c.account_id,
                tasks.c.api_key_id,
                tasks.c.price_micro,
                tasks.c.model,
                tasks.c.quality,
            ).where(tasks.c.id == task_id)
        )
    ).one()
    price = row.price_micro
    conn.execute(
        insert(ledger).values(
            account_id=row.account_id,
            api_key_id=row.api_key_id,
            task_id=task_id,
            kind="capture" if capture else "release",
            amount_micro=price,
            model=row.model,
            quality=row.quality,
            created_at=now,
        )
    )
    # Key row before account row, as in reserve(): the opposite order deadlocks on PostgreSQL
    # against a create of the same key.
    key = update(api_keys).where(api_keys.c.id == row.api_key_id)
    account = update(accounts).where(accounts.c.id == row.account_id)
    if capture:
        conn.execute(key.values(used_micro=api_keys.c.used_micro + price))
        conn.execute(account.values(used_micro=accounts.c.used_micro + price))
        conn.execute(update(tasks).where(tasks.c.id == task_id).values(charged_micro=price))
    else:
        conn.execute(key.values(spent_micro=api_keys.c.spent_micro - price))
        conn.execute(account.values(balance_micro=accounts.c.balance_micro + price))


def adjust(
    conn: Connection, *, account_id: int, delta_micro: int, note: str, now: datetime
) -> None:
    """An operator's top-up (positive) or deduction (negative); the balance stays >= 0."""
    if delta_micro == 0:
        return
    conn.execute(
        update(accounts)
        .where(accounts.c.id == account_id)
        .values(balance_micro=accounts.c.balance_micro + delta_micro)
    )
    conn.execute(
        insert(ledger).values(
            account_id=account_id,
            kind="credit" if delta_micro > 0 else "debit",
            amount_micro=abs(delta_micro),
            note=note,
            created_at=now,
        )
    )
