"""Results as files under one folder, served by the API through signed links."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from darkroom.storage.base import InvalidKey, StorageUnavailable, check_key

__all__ = ["STAGING", "InvalidKey", "LocalStorage", "StagedFile"]

# Where results are written before they get their key's name: inside the results folder, so
# publishing is a rename on one file system, and named so that no key can reach it.
STAGING = ".staging"


class StagedFile:
    """A result on disk under a temporary name: `publish` gives it its key, `discard` drops it."""

    def __init__(self, tmp: Path, path: Path, size: int) -> None:
        self.tmp = tmp
        self.path = path
        self.size = size

    def publish(self) -> None:
        """Rename it to its key's path, durably: a task is completed only after this returns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.path)
        _fsync_folder(self.path.parent)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


class LocalStorage:
    """Writes are atomic (temp file, then rename) and durable; keys can never escape `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def verify(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"cannot create the results folder {self.root}: {exc}"
            ) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(
                f"the results folder {self.root} is not writable; fix its permissions or set "
                "DARKROOM_DATA_DIR"
            )

    def path_for(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidKey(key)
        return path

    def put(self, key: str, data: bytes) -> None:
        """Write `data` under `key`, durably: when this returns, the file survives a power cut.

        The worker completes a task only after this, so a completed task always has its file."""
        self.stage(key, data).publish()

    def stage(self, key: str, data: bytes) -> StagedFile:
        """Write `data` to disk under a temporary name, to appear under `key` only when
        published: the worker writes a result while its image is still being checked, and a
        refused one is discarded without ever having had a name a link could reach."""
        path = self.path_for(key)
        staging = self.root / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=staging, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # the bytes reach the disk before any name does
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StagedFile(Path(tmp), path, len(data))

    def sweep_staging(self, older_than_s: float) -> int:
        """Delete staged files older than `older_than_s`: left by a worker that stopped between
        staging and publishing (a crash, a refused image whose discard never ran). Staging
        takes milliseconds, so anything this old has no owner. Returns how many went."""
        staging = self.root / STAGING
        if not staging.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in staging.iterdir():
            with contextlib.suppress(FileNotFoundError):  # published or discarded meanwhile
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
        return removed

    def direct_link(self, key: str, expires: int) -> str | None:
        return None  # the API serves the folder's files through its own signed links

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def get(self, key: str) -> bytes:
        return self.path_for(key).read_bytes()

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        path.unlink(missing_ok=True)
        parent = path.parent
        if parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (POSIX; Windows cannot open a folder)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
