"""Entry point of a worker process: load the engine, work until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import structlog

from darkroom.engine.base import ModelUnavailable
from darkroom.engine.memory import cuda_allocator_defaults, engine_on_cpu, keep_freed_memory
from darkroom.settings import Settings
from darkroom.storage.base import StorageUnavailable
from darkroom.worker.outage import DatabaseOutage
from darkroom.worker.supervisor import EXIT_CONFIG, die_with_parent
from darkroom.worker.worker import Worker

log = structlog.get_logger("darkroom.worker")


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    die_with_parent()
    worker = await Worker.from_settings(settings)
    if settings.worker_metrics_port is not None:
        serve_metrics(worker, settings.worker_metrics_address, settings.worker_metrics_port)
    await worker.run(stop)


def serve_metrics(worker: Worker, address: str, port: int) -> None:
    """The worker's own figures (task phases, outcomes, GPU memory) for Prometheus, on a
    thread of their own; the API's /metrics has the queue's."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, address, registry=worker.metrics.registry)
    log.info("metrics served", address=address, port=server.server_port)


def prepare_process(settings: Settings) -> None:
    """What must precede the engine in a worker process. A worker that forwards to a remote
    engine skips it: it has no engine here, and imports no torch (its image may have none)."""
    if settings.models[settings.served_model].remote is not None:
        return
    # Before torch touches CUDA (the allocator reads its configuration once).
    cuda_allocator_defaults(os.environ)
    # First, before the worker's threads exist: each keeps the malloc arena it starts with.
    if settings.keep_freed_memory and engine_on_cpu(settings.device):
        log.info("CPU engine: freed memory is kept for reuse", applied=keep_freed_memory())


def run_worker(settings: Settings) -> None:
    prepare_process(settings)
    try:
        asyncio.run(_main(settings))
    except (ModelUnavailable, StorageUnavailable) as exc:
        log.error("cannot start", reason=str(exc))
        print(f"darkroom worker: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except DatabaseOutage as exc:
        log.error("stopping: the database stayed unreachable", reason=str(exc))
        print(f"darkroom worker: {exc}", file=sys.stderr)
        sys.exit(1)
