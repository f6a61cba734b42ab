"""Each account's callback signing secret: made at creation or on first use, rotatable."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from darkroom.accounts.store import AccountStore, UnknownAccount
from darkroom.db.database import Database
from darkroom.db.schema import accounts

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database


async def test_secret_is_made_once_kept_and_rotated(db: Database) -> None:
    store = AccountStore(db)
    account = await store.create_account("hooks")
    first = await store.webhook_secret(account.id)
    assert first.startswith("whsec_") and len(first) > 40
    assert await store.webhook_secret(account.id) == first
    rotated = await store.rotate_webhook_secret("hooks")
    assert rotated != first and await store.webhook_secret(account.id) == rotated
    with pytest.raises(UnknownAccount):
        await store.rotate_webhook_secret("nobody")


async def test_accounts_from_before_signing_get_a_secret_on_first_use(db: Database) -> None:
    store = AccountStore(db)
    account = await store.create_account("old")
    async with db.transaction() as conn:
        await conn.execute(update(accounts).values(webhook_secret=None))
    made = await store.webhook_secret(account.id)
    assert made.startswith("whsec_")
    assert await store.webhook_secret(account.id) == made
