"""A batch's progress between the engine's thread and the loop, and the phases' stopwatch."""

from __future__ import annotations

import threading
import time

# Progress reported when the last denoising step ends; the rest is decode, check and upload.
DENOISE_SHARE = 95


class Progress:
    """Step counts written by the engine's thread, read by the loop's flusher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def on_step(self, done: int, total: int) -> None:
        with self._lock:
            self._value = done * DENOISE_SHARE // max(1, total)

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


class Stopwatch:
    """Milliseconds since the previous lap, for the worker's per-phase log fields."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> int:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return round(1000 * elapsed)
