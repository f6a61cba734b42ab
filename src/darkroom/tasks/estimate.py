"""Seconds until a task's result, from measured run times and the queue in front of it."""

from __future__ import annotations

import math
import statistics

from darkroom.contract import Quality, Status
from darkroom.tasks.store import QueueStats

# Used until this server has finished a task of that quality: the hosted service's figure.
FALLBACK_RUN_S = {Quality.K1: 45.0, Quality.K2: 90.0}


def run_time_s(stats: QueueStats, quality: Quality) -> float:
    if stats.recent_durations_s:
        return statistics.median(stats.recent_durations_s)
    return FALLBACK_RUN_S[quality]


def estimate_s(stats: QueueStats, quality: Quality, status: Status, progress: int) -> int:
    """Whole seconds until completion; at least 1."""
    run = run_time_s(stats, quality)
    if status is Status.PROCESSING:
        return max(1, math.ceil(run * (100 - progress) / 100))
    workers = max(1, stats.active_workers)
    return max(1, math.ceil(run * (1 + stats.ahead / workers)))
