"""Who a key is, remembered briefly: a request should not cost a database read to learn it.

An answer (a principal, or "no such live key") is kept `ttl_s` seconds, so a key revoked or
changed by another process (`darkroom keys revoke`) is refused by every API process at most
`ttl_s` later (`DARKROOM_KEY_CACHE_S`; 0 reads the database on every request). At most
`max_entries` answers are kept, the least recently used going first, so a flood of made-up keys
cannot grow it. Keys are held by their hash only.
"""

from __future__ import annotations

from collections import OrderedDict

from darkroom.accounts.keys import hash_key
from darkroom.accounts.store import AccountStore, Principal
from darkroom.clock import Clock, SystemClock


class CachedKeys:
    def __init__(
        self,
        accounts: AccountStore,
        ttl_s: float,
        *,
        max_entries: int = 10_000,
        clock: Clock | None = None,
    ) -> None:
        self.accounts = accounts
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock or SystemClock()
        self._answers: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()

    async def authenticate(self, key: str) -> Principal | None:
        """The principal of a live key, or None; from memory if asked within `ttl_s`."""
        if self.ttl_s <= 0:
            return await self.accounts.authenticate(key)
        digest, now = hash_key(key), self.clock.now().timestamp()
        kept = self._answers.get(digest)
        if kept is not None and now < kept[0]:
            self._answers.move_to_end(digest)
            return kept[1]
        principal = await self.accounts.authenticate(key)
        self._answers[digest] = (now + self.ttl_s, principal)
        self._answers.move_to_end(digest)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)
        return principal

    def known(self, key: str) -> Principal | None:
        """The principal of `key` if this process remembers it as live now; no database read."""
        if self.ttl_s <= 0:
            return None
        kept = self._answers.get(hash_key(key))
        if kept is None or self.clock.now().timestamp() >= kept[0]:
            return None
        return kept[1]

    def forget(self) -> None:
        """Drop every answer (this process changed keys itself)."""
        self._answers.clear()
