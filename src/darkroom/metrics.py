"""Figures each process keeps in its own memory, for Prometheus.

The queue's figures are read from the database at each scrape (`api/metrics.py`: every API
replica reports the same queue). These are per process, summed by Prometheus across replicas:

- an API process: its requests' latency by method, route template and status, and its callback
  sender's attempts by outcome (`ApiMetrics`);
- a worker process: each task's time in each phase (queued, generating, finishing) and how its
  attempt ended, and the GPU's memory where CUDA is (`WorkerMetrics`, served on
  `DARKROOM_WORKER_METRICS_PORT`).

Each object has a registry of its own, so tests and several apps in one process never share
a series.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

# Seconds: API answers are milliseconds to seconds; an event stream or an OpenAI-style
# request that waits for its images, minutes.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Seconds a task spends in a phase: a GPU's generation takes about one to ten; a queue, more.
PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

PHASES = ("queued", "generating", "finishing")


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_seconds = Histogram(
            "darkroom_http_request_duration_seconds",
            "Time to answer a request, by method, route template and status.",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.callback_attempts = Counter(
            "darkroom_callback_attempts",
            "Callback delivery attempts by outcome: delivered, retry (failed, another attempt "
            "is due) or failed (the last attempt failed).",
            ["outcome"],
            registry=self.registry,
        )

    def callback_attempt(self, status: str | None) -> None:
        """Count an attempt from the outbox's new status (None: the lock was lost meanwhile)."""
        if status is not None:
            outcome = {"delivered": "delivered", "failed": "failed"}.get(status, "retry")
            self.callback_attempts.labels(outcome).inc()


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.phase_seconds = Histogram(
            "darkroom_task_phase_seconds",
            "Seconds a task's attempt spent queued (submission to claim), generating (the "
            "engine's batch) and finishing (image check, encoding, storing, completing).",
            ["model", "phase"],
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self.attempts = Counter(
            "darkroom_task_attempts",
            "Task attempts this worker ended, by outcome: completed, discarded (no longer "
            "this worker's when it finished), or the failure's error code.",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.registry.register(_GpuMemory())

    def phase(self, model: str, phase: str, seconds: float) -> None:
        self.phase_seconds.labels(model, phase).observe(max(0.0, seconds))

    def ended(self, model: str, outcome: str) -> None:
        self.attempts.labels(model, outcome).inc()


class _GpuMemory:
    """CUDA's memory as torch's allocator holds it, read at each scrape; nothing where CUDA is
    not in use (and torch is never imported for it: a forwarding worker has none)."""

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return
        gauge = GaugeMetricFamily(
            "darkroom_gpu_memory_bytes",
            "GPU memory of this worker's process: allocated (tensors), reserved (the "
            "allocator's cache) and peak (most allocated since start), per device.",
            labels=["device", "kind"],
        )
        for index in range(torch.cuda.device_count()):
            device = str(index)
            gauge.add_metric([device, "allocated"], torch.cuda.memory_allocated(index))
            gauge.add_metric([device, "reserved"], torch.cuda.memory_reserved(index))
            gauge.add_metric([device, "peak"], torch.cuda.max_memory_allocated(index))
        yield gauge
