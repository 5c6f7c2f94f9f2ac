"""``estimated_start_time`` of a submitted job: the estimator's arithmetic, then through the API."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from coordinator.estimate import estimated_start
from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, ProcessMarker, wait_for

NOW = 1000.0

# --- the estimator ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("average", "slots", "running", "ahead", "expected"),
    [
        # a free slot: it starts now, history or not
        (None, 1, [], 0, NOW),
        (None, 2, [990.0], 0, NOW),
        (30.0, 3, [990.0], 1, NOW),
        # it must wait and there is no history: no estimate, never a made-up one
        (None, 1, [990.0], 0, None),
        (0.0, 1, [990.0], 0, None),
        (None, 2, [990.0], 1, None),
        # one slot: the running job ends at its start + average, then each job ahead takes an average
        (30.0, 1, [990.0], 0, 1020.0),
        (30.0, 1, [990.0], 2, 1080.0),
        # a running job already past the average is taken to end now
        (30.0, 1, [900.0], 0, NOW),
        (30.0, 1, [900.0], 1, 1030.0),
        # two slots: each job ahead takes the earliest free one
        (20.0, 2, [990.0, 995.0], 0, 1010.0),
        (20.0, 2, [990.0, 995.0], 1, 1015.0),
        (20.0, 2, [990.0, 995.0], 2, 1030.0),
        (20.0, 2, [990.0, 995.0], 3, 1035.0),
        (20.0, 2, [990.0], 1, 1010.0),
        (20.0, 2, [990.0], 2, 1020.0),
        # more running than slots (the limit was lowered while they ran): a slot frees only when the running
        # count drops below the limit, i.e. at the second end for one slot and two running
        (20.0, 1, [990.0, 995.0], 0, 1015.0),
        (20.0, 1, [990.0, 995.0], 1, 1035.0),
        (20.0, 2, [980.0, 990.0, 995.0], 0, 1010.0),
        # no slots at all: no estimate
        (20.0, 0, [], 0, None),
    ],
)
def test_estimated_start(
    average: float | None, slots: int, running: list[float], ahead: int, expected: float | None
) -> None:
    assert estimated_start(NOW, average, slots, running, ahead) == expected


# --- through the API -------------------------------------------------------------------------------------------


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def _submit(coordinator: CoordinatorHandle, runner_id: str, run: str) -> tuple[dict[str, Any], float, float]:
    """Submit a one-step job; returns the answer and the wall-clock bounds of the request."""
    before = time.time()
    status, body = await coordinator.api.post(
        f"/runners/{runner_id}/jobs", {"name": "estimated", "steps": [{"name": "s0", "run": run}]}
    )
    after = time.time()
    assert status == 201, body
    assert "estimated_start_time" in body, body
    return body, before, after


# Timestamps on the wire are cut to milliseconds.
MS = 0.0015


async def test_without_history_a_waiting_job_has_no_estimate(
    coordinator: CoordinatorHandle, start_agent: StartAgent, process_marker: Any
) -> None:
    agent = await start_agent(max_concurrent_jobs=1)
    runner_id = agent.identity().runner_id
    marker: ProcessMarker = process_marker()
    first, before, after = await _submit(coordinator, runner_id, marker.sleep())
    # A slot was free: it starts now.
    assert before - MS <= _epoch(first["estimated_start_time"]) <= after + MS, first
    await coordinator.api.wait_job(runner_id, first["job_id"], {"running"})
    second, _, _ = await _submit(coordinator, runner_id, "true")
    assert second["estimated_start_time"] is None, second

    # The queued job first: cancelling the running one would free its slot and let it finish.
    for job in (second, first):
        status, body = await coordinator.api.post(f"/runners/{runner_id}/jobs/{job['job_id']}/cancel")
        assert status == 200, body
    await marker.assert_gone()


async def test_with_history_a_queued_job_is_estimated_from_the_average_execution_time(
    coordinator: CoordinatorHandle, start_agent: StartAgent, process_marker: Any
) -> None:
    agent = await start_agent(max_concurrent_jobs=1)
    runner_id = agent.identity().runner_id
    api = coordinator.api
    for _ in range(2):
        done, _, _ = await _submit(coordinator, runner_id, "sleep 0.2")
        await api.wait_job(runner_id, done["job_id"], {"completed"})
    _, runner = await api.get(f"/runners/{runner_id}")
    average = runner["statistics"]["average_execution_time"]
    assert 0.2 <= average < 2.0, runner["statistics"]

    marker: ProcessMarker = process_marker()
    long, _, _ = await _submit(coordinator, runner_id, marker.sleep())
    running = await api.wait_job(runner_id, long["job_id"], {"running"})
    slot_free = _epoch(running["started_at"]) + average  # when the running job is expected to end

    nxt, before_next, after_next = await _submit(coordinator, runner_id, "true")  # 0 jobs ahead
    last, before_last, after_last = await _submit(coordinator, runner_id, "true")  # 1 job ahead
    next_at = _epoch(nxt["estimated_start_time"])
    last_at = _epoch(last["estimated_start_time"])
    assert max(slot_free, before_next) - 2 * MS <= next_at <= max(slot_free, after_next) + 2 * MS, (nxt, slot_free)
    expected_last = (max(slot_free, before_last) + average, max(slot_free, after_last) + average)
    assert expected_last[0] - 2 * MS <= last_at <= expected_last[1] + 2 * MS, (last, expected_last)
    assert last_at > after_last, "a job with one ahead of it and one running is estimated to start later than now"

    status, body = await api.post(f"/runners/{runner_id}/jobs/{long['job_id']}/cancel")
    assert status == 200, body
    for job in (nxt, last):
        assert (await api.wait_job(runner_id, job["job_id"], TERMINAL))["status"] == "completed"
    await marker.assert_gone()


async def test_a_stopped_runner_gives_no_estimate(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    status, body = await coordinator.api.post(f"/runners/{runner_id}/stop")
    assert status == 200, body

    async def stopped() -> bool:
        _, runner = await coordinator.api.get(f"/runners/{runner_id}")
        return bool(runner["status"] == "stopped")

    await wait_for(stopped, 5, what="the runner to show as stopped")
    held, _, _ = await _submit(coordinator, runner_id, "true")
    assert held["estimated_start_time"] is None, held
    status, body = await coordinator.api.post(f"/runners/{runner_id}/jobs/{held['job_id']}/cancel")
    assert status == 200, body
