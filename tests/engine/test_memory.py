"""Keeping freed memory: a large block freed on a thread is reused, not faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from darkroom.engine.memory import engine_on_cpu

# Starts processes (`make unit` leaves it out).
pytestmark = pytest.mark.process

# In a fresh process (a thread keeps the arena it started with, so the setting must come first):
# a thread allocates, touches and frees a 256 MB block three times; prints the minor page faults
# of the last round.
CHILD = """
import ctypes, ctypes.util, resource, sys, threading
from darkroom.engine.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 256 * 2**20
faults = []
def work():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = libc.malloc(SIZE)
        ctypes.memset(block, 1, SIZE)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(faults[-1])
"""


def last_round_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_a_freed_block_is_reused_instead_of_faulted_in_again() -> None:
    pages = 256 * 2**20 // 4096
    assert last_round_faults("default") > pages // 2  # mmapped and unmapped every round
    assert last_round_faults("keep") < pages // 100  # the same heap pages, already present


def test_an_explicit_device_decides_without_asking_torch() -> None:
    assert engine_on_cpu("cpu")
    assert not engine_on_cpu("cuda")
    assert not engine_on_cpu("cuda:1")


def test_workers_set_expandable_cuda_segments_unless_the_operator_chose() -> None:
    from darkroom.engine.memory import CUDA_ALLOCATOR, cuda_allocator_defaults

    environ: dict[str, str] = {}
    assert cuda_allocator_defaults(environ) and environ == {"PYTORCH_ALLOC_CONF": CUDA_ALLOCATOR}
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        chosen = {name: "max_split_size_mb:512"}
        assert not cuda_allocator_defaults(chosen) and chosen == {name: "max_split_size_mb:512"}
