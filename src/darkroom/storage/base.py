"""What the worker, the API and maintenance need of a result store, local folder or S3 bucket."""

from __future__ import annotations

import re
from typing import Protocol

_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")


class InvalidKey(ValueError):
    """A storage key that could name something outside the results' place."""


class StorageUnavailable(RuntimeError):
    """Results cannot be written where the settings say; the message says how to fix it."""


def check_key(key: str) -> str:
    """`key` if it is one darkroom writes (lower-case segments, no dot segments); else InvalidKey."""
    if not _KEY_RE.fullmatch(key) or ".." in key:
        raise InvalidKey(key)
    return key


class Staged(Protocol):
    """A result written but not yet reachable under its key."""

    @property
    def size(self) -> int: ...

    def publish(self) -> None:
        """Make it reachable under its key, durably; a task is completed only after this."""

    def discard(self) -> None: ...


class ResultStorage(Protocol):
    """Blocking calls: async callers run them in a thread."""

    def verify(self) -> None:
        """Raise StorageUnavailable unless results can be written here: a worker checks at
        start, rather than fail every task it generates."""

    def stage(self, key: str, data: bytes) -> Staged: ...

    def put(self, key: str, data: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def get(self, key: str) -> bytes:
        """A published result's bytes; FileNotFoundError if there is none under `key`."""

    def sweep_staging(self, older_than_s: float) -> int:
        """Remove staged results older than this that nobody published or discarded."""

    def direct_link(self, key: str, expires: int) -> str | None:
        """A link clients fetch from the store itself, valid until `expires` (Unix time); None
        when the API serves the file through its own signed link."""
