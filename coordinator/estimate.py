"""When a newly queued job should start, from its queue position and the runner's history.

Each of the runner's ``slots`` frees up when its running job reaches the runner's average execution time;
the jobs ahead take the earliest free slot in turn. With no history there is no estimate (``None``),
never a made-up value.
"""

from __future__ import annotations

import heapq
import time
from datetime import datetime

from coordinator.store.base import QueueState, RunnerRecord, Statistics, Store
from shared.timeutil import from_epoch

# A runner's statistics are read again when one of its jobs finishes, and otherwise at most this often, which
# keeps a scan of the runner's finished jobs off nearly every submission.
STATISTICS_MAX_AGE = 60.0


def estimated_start(
    now: float, average: float | None, slots: int, running_started: list[float], queued_ahead: int
) -> float | None:
    if slots < 1:
        return None
    free_now = max(slots - len(running_started), 0)
    if queued_ahead < free_now:
        return now  # a slot is free for it already
    if not average or average <= 0:
        return None
    ends = sorted(max(started + average, now) for started in running_started)
    # With more jobs running than slots (the limit was lowered while they ran), the first ends only bring
    # the count back down to the limit; a slot frees at the later ones.
    excess = max(len(ends) - slots, 0)
    free_at = ends[excess:] + [now] * free_now
    heapq.heapify(free_at)
    for _ in range(queued_ahead):
        heapq.heappush(free_at, heapq.heappop(free_at) + average)
    return free_at[0]


class Estimator:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._statistics: dict[str, tuple[float, Statistics]] = {}

    async def start_time(self, runner: RunnerRecord, queue: QueueState) -> datetime | None:
        if runner.status != "active":
            return None  # its agent is away or stopped: no honest estimate
        slots = runner.metadata.get("max_concurrent_jobs")
        if not isinstance(slots, int) or isinstance(slots, bool):
            return None
        stats = await self._cached_statistics(runner.id)
        average = stats.average_execution_time if stats.total_jobs_executed else None
        now = time.time()
        moment = estimated_start(now, average, slots, queue.running_started, queue.queued_ahead)
        return from_epoch(moment) if moment is not None else None

    def job_finished(self, runner_id: str) -> None:
        self._statistics.pop(runner_id, None)

    async def _cached_statistics(self, runner_id: str) -> Statistics:
        now = time.monotonic()
        cached = self._statistics.get(runner_id)
        if cached is not None and now - cached[0] < STATISTICS_MAX_AGE:
            return cached[1]
        stats = await self._store.statistics(runner_id)
        if len(self._statistics) > 10_000:
            self._statistics.clear()
        self._statistics[runner_id] = (now, stats)
        return stats
