"""Result files: atomic and durable writes, staged writes, keys that cannot leave the results
folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from darkroom.storage.base import StorageUnavailable
from darkroom.storage.local import STAGING, InvalidKey, LocalStorage


def test_put_writes_the_bytes_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("task-1/0.png", b"first")
    storage.put("task-1/0.png", b"second")  # a retried attempt replaces the file
    assert storage.path_for("task-1/0.png").read_bytes() == b"second"
    assert sorted(p.name for p in (tmp_path / "task-1").iterdir()) == ["0.png"]
    assert storage.get("task-1/0.png") == b"second"
    storage.delete("task-1/0.png")
    assert not storage.exists("task-1/0.png")
    with pytest.raises(FileNotFoundError):
        storage.get("task-1/0.png")
    assert not (tmp_path / "task-1").exists()  # its emptied folder goes too


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fds through /proc")
def test_put_syncs_the_file_before_renaming_it_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a power cut needs: the bytes on disk before the name points at them, and the name
    on disk before the task is completed."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        events.append("sync folder" if target.is_dir() else f"sync {target.name[:5]}")
        real_fsync(fd)

    def replace(src: str, dst: str | Path) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    LocalStorage(tmp_path).put("task-2/0.png", b"data")
    assert events == ["sync .tmp-", "rename", "sync folder"]


def test_a_staged_result_has_no_name_until_published(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    staged = storage.stage("task-3/0.png", b"pixels")
    assert staged.size == 6
    assert not storage.exists("task-3/0.png")
    assert staged.tmp.parent == tmp_path / STAGING and staged.tmp.read_bytes() == b"pixels"
    staged.publish()
    assert storage.path_for("task-3/0.png").read_bytes() == b"pixels"
    assert not any((tmp_path / STAGING).iterdir())


def test_a_discarded_result_leaves_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.stage("task-4/0.png", b"refused").discard()
    assert not storage.exists("task-4/0.png")
    assert not (tmp_path / "task-4").exists()
    assert not any((tmp_path / STAGING).iterdir())


def test_the_sweep_removes_only_abandoned_staged_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.sweep_staging(older_than_s=60) == 0  # no staging folder yet
    old = storage.stage("task-5/0.png", b"left by a crash")
    fresh = storage.stage("task-6/0.png", b"being checked")
    an_hour_ago = time.time() - 3600
    os.utime(old.tmp, (an_hour_ago, an_hour_ago))
    assert storage.sweep_staging(older_than_s=60) == 1
    assert not old.tmp.exists()
    fresh.publish()  # the live one is untouched
    assert storage.path_for("task-6/0.png").read_bytes() == b"being checked"


@pytest.mark.parametrize("key", ["../x.png", "/etc/passwd", "a/../../b", "A/0.png", "", "a//b"])
def test_keys_that_could_leave_the_folder_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidKey):
        LocalStorage(tmp_path / "results").put(key, b"x")
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_a_results_folder_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    LocalStorage(tmp_path / "results").verify()  # created when missing
    assert (tmp_path / "results").is_dir()
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StorageUnavailable, match="cannot create the results folder"):
        LocalStorage(tmp_path / "a-file" / "results").verify()
