"""Who a key is, remembered for a bounded time: a revoked key is refused within that bound."""

from __future__ import annotations

import pytest

from darkroom.accounts.cache import CachedKeys
from darkroom.accounts.store import AccountStore, Principal
from darkroom.db.database import Database
from darkroom.testing import FakeClock

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database


class CountingStore(AccountStore):
    reads = 0

    async def authenticate(self, key: str) -> Principal | None:
        self.reads += 1
        return await super().authenticate(key)


async def test_a_revoked_key_is_refused_once_its_answer_expires(db: Database) -> None:
    store = CountingStore(db)
    await store.create_account("alice")
    info, key = await store.create_key("alice")
    clock = FakeClock()
    keys = CachedKeys(store, ttl_s=5, clock=clock)
    assert (await keys.authenticate(key)) is not None
    assert (await keys.authenticate(key)) is not None and store.reads == 1
    assert await store.revoke_key(info.id)
    clock.advance(4.9)
    assert (await keys.authenticate(key)) is not None  # within the documented bound
    clock.advance(0.2)
    assert await keys.authenticate(key) is None and store.reads == 2
    assert await keys.authenticate(key) is None and store.reads == 2  # the refusal is kept too


async def test_without_a_cache_every_request_asks(db: Database) -> None:
    store = CountingStore(db)
    await store.create_account("bob")
    info, key = await store.create_key("bob")
    keys = CachedKeys(store, ttl_s=0)
    assert await keys.authenticate(key) is not None
    await store.revoke_key(info.id)
    assert await keys.authenticate(key) is None and store.reads == 2


async def test_made_up_keys_cannot_grow_it(db: Database) -> None:
    store = CountingStore(db)
    keys = CachedKeys(store, ttl_s=60, max_entries=3)
    for n in range(10):
        assert await keys.authenticate(f"sk-made-up-{n}") is None
    assert len(keys._answers) == 3
