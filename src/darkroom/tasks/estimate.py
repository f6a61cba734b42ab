"""Seconds until a task's result, from measured run times and the queue in front of it."""

from __future__ import annotations

import math
import statistics

from darkroom.contract import Quality, Status
from darkroom.tasks.stats import QueueStats

# Used until this server has finished a task of that quality: the hosted service's figure.
FALLBACK_RUN_S = {Quality.K1: 45.0, Quality.K2: 90.0}


def run_time_s(stats: QueueStats, quality: Quality) -> float:
    """Median seconds one task of `quality` of this model took lately, or the fallback."""
    recent = stats.recent_durations_s.get(quality)
    if recent:
        return statistics.median(recent)
    return FALLBACK_RUN_S[quality]


def estimate_s(stats: QueueStats, quality: Quality, status: Status, progress: int) -> int:
    """Whole seconds until completion; at least 1. A pending task waits for the work ahead of it
    (each quality at its own run time), shared among the workers busy with its model."""
    run = run_time_s(stats, quality)
    if status is Status.PROCESSING:
        return max(1, math.ceil(run * (100 - progress) / 100))
    ahead_s = sum(count * run_time_s(stats, q) for q, count in stats.ahead.items())
    workers = max(1, stats.active_workers)
    return max(1, math.ceil(run + ahead_s / workers))
