"""A runner's queue, on every executor: at most ``max_concurrent_jobs`` at a time, the rest wait in FIFO order
and show in the runner's ``current_load``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.helpers import wait_for
from tests.semantics.conftest import ExecutorUnderTest


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _max_overlap(jobs: list[dict[str, Any]]) -> int:
    """The most jobs running at one moment, from their ``[started_at, completed_at)`` intervals."""
    edges = sorted([(_at(j["completed_at"]), -1) for j in jobs] + [(_at(j["started_at"]), 1) for j in jobs])
    running = peak = 0
    for _, change in edges:  # an end sorts before a start at the same instant
        running += change
        peak = max(peak, running)
    return peak


async def test_five_jobs_on_two_slots_never_overlap_more_than_two_and_start_in_order(
    executor: ExecutorUnderTest,
) -> None:
    runner = await executor.start(max_concurrent_jobs=2)
    job_ids = [await runner.submit(f"queued-{i}", "sleep 1") for i in range(5)]

    async def waiting_in_load() -> dict[str, Any] | None:
        status, body = await runner.api.get(f"/runners/{runner.runner_id}")
        assert status == 200, body
        load = body["current_load"]
        return load if load["active_jobs"] == 2 and load["queued_jobs"] >= 1 else None

    load = await wait_for(waiting_in_load, 5, what="queued jobs in the runner's current_load")
    assert load["queued_jobs"] <= 3, load

    jobs = [await runner.wait(job_id) for job_id in job_ids]
    assert [j["status"] for j in jobs] == ["completed"] * 5, jobs
    assert _max_overlap(jobs) == 2, [(j["started_at"], j["completed_at"]) for j in jobs]
    starts = [_at(j["started_at"]) for j in jobs]
    assert starts == sorted(starts), f"jobs did not start in submission order: {starts}"
    # The third job waited for a slot: it started only once one of the first two had ended.
    assert starts[2] >= min(_at(jobs[0]["completed_at"]), _at(jobs[1]["completed_at"]))

    async def queue_empty() -> bool:
        _, body = await runner.api.get(f"/runners/{runner.runner_id}")
        load = body["current_load"]
        return load["active_jobs"] == 0 and load["queued_jobs"] == 0

    await wait_for(queue_empty, 5, what="the runner's load to show no active or queued jobs")
