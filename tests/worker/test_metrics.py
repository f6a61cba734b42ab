"""The worker's own figures: GPU memory is read at each scrape, only where CUDA is in use."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from darkroom.metrics import WorkerMetrics


def gpu_samples(metrics: WorkerMetrics) -> dict[tuple[str, str], float]:
    return {
        (s.labels["device"], s.labels["kind"]): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "darkroom_gpu_memory_bytes"
    }


def test_no_gpu_series_without_cuda() -> None:
    assert not torch.cuda.is_initialized()  # the CPU build, as on this machine
    assert gpu_samples(WorkerMetrics()) == {}


def test_no_gpu_series_and_no_torch_import_in_a_forwarding_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "torch")
    assert gpu_samples(WorkerMetrics()) == {}
    assert "torch" not in sys.modules


def test_each_devices_memory_as_the_allocator_reports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA is not on this machine: a stand-in for torch.cuda with two devices' figures."""
    gib = 2**30
    cuda = SimpleNamespace(
        is_initialized=lambda: True,
        device_count=lambda: 2,
        memory_allocated=lambda i: (20 + i) * gib,
        memory_reserved=lambda i: (30 + i) * gib,
        max_memory_allocated=lambda i: (40 + i) * gib,
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    assert gpu_samples(WorkerMetrics()) == {
        ("0", "allocated"): 20 * gib, ("0", "reserved"): 30 * gib, ("0", "peak"): 40 * gib,
        ("1", "allocated"): 21 * gib, ("1", "reserved"): 31 * gib, ("1", "peak"): 41 * gib,
    }  # fmt: skip
