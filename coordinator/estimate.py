"""When a newly queued job should start, from its queue position and the runner's history.

Each of the runner's ``slots`` frees up when its running job reaches the runner's average execution time;
the jobs ahead take the earliest free slot in turn. With no history there is no estimate (``None``),
never a made-up value.
"""

from __future__ import annotations

import heapq


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
    # With more jobs running than slots (the limit was lowered while they ran), the first ends free no slot:
    # a slot frees only once fewer than ``slots`` run, so the slots free at the last ``slots`` ends.
    free_at = ends[max(len(ends) - slots, 0) :] + [now] * free_now
    heapq.heapify(free_at)
    for _ in range(queued_ahead):
        heapq.heappush(free_at, heapq.heappop(free_at) + average)
    return free_at[0]
