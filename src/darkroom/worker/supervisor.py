"""Keeps one worker child process alive for `darkroom serve`, restarting it when it dies."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

import structlog

log = structlog.get_logger("darkroom.supervisor")

EXIT_CONFIG = 78
"""A worker that exits with this (EX_CONFIG) cannot start as configured: restarting won't help."""


PARENT_ENV = "DARKROOM_SUPERVISOR_PID"


def die_with_parent() -> None:
    """In a supervised worker: have Linux SIGTERM it if `serve` dies, even by SIGKILL."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class WorkerSupervisor:
    """Runs `python -m darkroom worker` with the parent's environment; restarts with back-off."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._env = env if env is not None else dict(os.environ)
        self._stop = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        child = self._child
        if child and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            self._child = subprocess.Popen(
                [sys.executable, "-m", "darkroom", "worker"],
                env={**self._env, PARENT_ENV: str(os.getpid())},
            )
            log.info("worker started", pid=self._child.pid)
            code = self._child.wait()
            if self._stop.is_set():
                return
            if code == EXIT_CONFIG:
                log.error("worker cannot start as configured; stopping darkroom")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            ran = time.monotonic() - started
            backoff = 1.0 if ran > 60 else min(backoff * 2, 30.0)
            self.restarts += 1
            log.error("worker exited; restarting", code=code, after_s=backoff)
            self._stop.wait(backoff)
