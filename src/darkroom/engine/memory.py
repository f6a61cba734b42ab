"""Keeping the memory a CPU engine frees, so the next image reuses it instead of faulting it in.

torch has no caching allocator on the CPU: every tensor's storage comes from malloc and goes back
at once. glibc serves allocations above its mmap threshold (a few MB, raised as large blocks are
freed) with fresh `mmap` pages and unmaps them on free, so each generation pages its activations
in again: with the tiny engine, ~360,000 minor page faults (1.4 GB of zeroed pages) per 1K image,
a third of its time. Threads other than the main one also get their own malloc arenas, whose
heaps are capped at 64 MB, so a large block allocated on the worker's engine thread is always
mmapped, whatever the threshold.

`keep_freed_memory` makes every thread allocate from the main heap (one arena), serves blocks up
to 2 GB from it instead of mmap, and stops returning its free top to the system below 2 GB: the
pages of the first image are reused by every later one. `bench/cpu_memory.py` on a 2-core CPU
(tiny engine): 1K 0.89 -> 0.57 s, 2K 5.4 -> 4.1 s; the heap is kept at its peak (1.3 -> 1.9 GB
after 1K images, 1.8 -> 2.8 GB after 2K). It must run before any other thread allocates,
because an existing thread keeps the arena it has: the worker calls it first thing. Python's
bindings to `mallopt` are glibc's only; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from collections.abc import MutableMapping

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# mallopt takes an int: the largest block served from the heap, and the free top kept.
KEEP_BYTES = 2**31 - 1


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False where this is not glibc (nothing is changed)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    return all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (M_ARENA_MAX, 1),
            (M_MMAP_THRESHOLD, KEEP_BYTES),
            (M_TRIM_THRESHOLD, KEEP_BYTES),
        )
    )


def engine_on_cpu(device: str | None) -> bool:
    """Whether a worker with this `device` setting runs its engine on the CPU: the rule of
    `krea2.pick_device`, without importing diffusers before `keep_freed_memory` is set."""
    if device is not None:
        return device.split(":")[0] == "cpu"
    import torch

    return not torch.cuda.is_available()


# On CUDA: the caching allocator grows segments in place instead of carving fixed blocks, so
# buffers of the many sizes a worker meets (1K and 2K, batches of 1 to 4) do not strand free
# memory between them, and an out-of-memory failure leaves less fragmentation behind.
CUDA_ALLOCATOR = "expandable_segments:True"


def cuda_allocator_defaults(environ: MutableMapping[str, str]) -> bool:
    """Set darkroom's CUDA allocator configuration unless the operator set one (either of torch's
    two names). Must run before CUDA's first allocation, which reads it. Whether it set it."""
    if "PYTORCH_ALLOC_CONF" in environ or "PYTORCH_CUDA_ALLOC_CONF" in environ:
        return False
    environ["PYTORCH_ALLOC_CONF"] = CUDA_ALLOCATOR
    return True
