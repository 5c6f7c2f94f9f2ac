"""Runner control through the coordinator: ``POST /runners/{id}/stop``, ``/start`` and ``/restart``."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, Api, ProcessMarker, assert_error, register_runner, submit_job, wait_for

STOPPED = {"success": True, "message": "Runner stopped successfully", "status": "stopped"}
STARTED = {"success": True, "message": "Runner started successfully", "status": "starting"}
RESTARTING = {"success": True, "message": "Runner restart initiated", "status": "restarting"}


async def _control(api: Api, runner_id: str, action: str, body: Any = None) -> dict[str, Any]:
    status, answer = await api.post(f"/runners/{runner_id}/{action}", body)
    assert status == 200, answer
    return dict(answer)


async def _runner(api: Api, runner_id: str) -> dict[str, Any]:
    status, body = await api.get(f"/runners/{runner_id}")
    assert status == 200, body
    return dict(body)


async def _heartbeats(api: Api, runner_id: str, count: int = 2) -> None:
    """Wait until the agent has sent ``count`` more heartbeats (each one also wakes job delivery)."""
    for _ in range(count):
        seen = (await _runner(api, runner_id))["metadata"]["last_seen"]

        async def newer(seen: str = seen) -> bool:
            return bool((await _runner(api, runner_id))["metadata"]["last_seen"] > seen)

        await wait_for(newer, 5, what="the next heartbeat")


async def _assert_held(api: Api, runner_id: str, job_id: str) -> None:
    """The job is still queued on the coordinator and never reached the agent."""
    await _heartbeats(api, runner_id)
    job = await api.job(runner_id, job_id)
    assert job["status"] == "queued" and job["attempts"] == [], job
    assert (await _runner(api, runner_id))["current_load"]["queued_jobs"] == 0


async def test_graceful_stop_lets_the_running_job_finish_and_holds_new_jobs_until_start(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    api = coordinator.api
    running = await submit_job(api, runner_id, "finishing", "sleep 1")
    await api.wait_job(runner_id, running, {"running"})

    assert await _control(api, runner_id, "stop") == STOPPED
    assert (await _runner(api, runner_id))["status"] == "stopped"
    held = await submit_job(api, runner_id, "held", "true")
    assert (await api.wait_job(runner_id, running, TERMINAL))["status"] == "completed"
    await _assert_held(api, runner_id, held)
    assert (await _runner(api, runner_id))["status"] == "stopped", "heartbeats of a stopped runner say stopped"

    assert await _control(api, runner_id, "start") == STARTED
    await api.wait_runner_status(runner_id, "active", timeout=5)
    assert (await api.wait_job(runner_id, held, TERMINAL))["status"] == "completed"


async def test_immediate_stop_cancels_running_jobs_at_once_and_keeps_queued_ones_for_start(
    coordinator: CoordinatorHandle, start_agent: StartAgent, process_marker: Any
) -> None:
    agent = await start_agent(max_concurrent_jobs=1)
    runner_id = agent.identity().runner_id
    api = coordinator.api
    marker: ProcessMarker = process_marker()
    long = await submit_job(api, runner_id, "long", marker.background())
    await api.wait_job(runner_id, long, {"running"})
    waiting = await submit_job(api, runner_id, "waiting", "true")

    async def delivered() -> bool:
        return bool((await _runner(api, runner_id))["current_load"]["queued_jobs"] == 1)

    await wait_for(delivered, 5, what="the second job to wait in the agent's queue")

    began = time.monotonic()
    assert await _control(api, runner_id, "stop", {"graceful": False, "reason": "maintenance"}) == STOPPED
    job = await api.wait_job(runner_id, long, TERMINAL, timeout=5)
    took = time.monotonic() - began
    assert job["status"] == "cancelled", job
    assert "maintenance" in (job["reason"] or ""), job
    assert took < 1.5, f"an immediate stop took {took:.2f}s to end the running job"
    await marker.assert_gone()

    await _heartbeats(api, runner_id)
    job = await api.job(runner_id, waiting)
    assert job["status"] == "queued" and job["attempts"] == [], "a queued job ran or was dropped while stopped"

    assert await _control(api, runner_id, "start") == STARTED
    assert (await api.wait_job(runner_id, waiting, TERMINAL))["status"] == "completed"


async def test_graceful_stop_cancels_a_job_still_running_when_its_timeout_passes(
    coordinator: CoordinatorHandle, start_agent: StartAgent, process_marker: Any
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    api = coordinator.api
    marker: ProcessMarker = process_marker()
    long = await submit_job(api, runner_id, "long", marker.sleep())
    await api.wait_job(runner_id, long, {"running"})

    began = time.monotonic()
    assert await _control(api, runner_id, "stop", {"graceful": True, "timeout": 0.5}) == STOPPED
    assert (await api.job(runner_id, long))["status"] == "running", "a graceful stop ended the job at once"
    job = await api.wait_job(runner_id, long, TERMINAL, timeout=5)
    took = time.monotonic() - began
    assert job["status"] == "cancelled", job
    assert "graceful stop timed out" in (job["reason"] or ""), job
    assert 0.5 <= took < 2.5, f"cancelled {took:.2f}s after a graceful stop with timeout 0.5"
    await marker.assert_gone()


async def test_restart_shows_restarting_until_running_jobs_finish_then_active_again(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    api = coordinator.api
    running = await submit_job(api, runner_id, "finishing", "sleep 1")
    await api.wait_job(runner_id, running, {"running"})

    assert await _control(api, runner_id, "restart") == RESTARTING
    await api.wait_runner_status(runner_id, "restarting", timeout=1)
    during = await submit_job(api, runner_id, "during-restart", "true")
    await _heartbeats(api, runner_id, 1)
    assert (await _runner(api, runner_id))["status"] == "restarting", "restart did not wait for the running job"
    assert (await api.job(runner_id, during))["status"] == "queued"

    await api.wait_runner_status(runner_id, "active", timeout=5)
    # The job's end travels with the agent's events, its status with heartbeats: either may arrive first.
    finished = await api.wait_job(runner_id, running, TERMINAL, timeout=5)
    assert finished["status"] == "completed", "a graceful restart ended the job"
    assert (await api.wait_job(runner_id, during, TERMINAL))["status"] == "completed"


async def test_control_bodies_are_validated_before_anything_changes(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    api = coordinator.api
    for action, body, field in [
        ("stop", {"graceful": "maybe"}, "graceful"),
        ("stop", {"timeout": -1}, "timeout"),
        ("stop", {"force": True}, "force"),
        ("restart", {"timeout": -1}, "timeout"),
        ("restart", {"reason": "not a restart field"}, "reason"),
    ]:
        status, answer = await api.post(f"/runners/{runner_id}/{action}", body)
        assert_error(status, answer, 400, "INVALID_REQUEST", field=field)
    status, answer = await api.post(
        f"/runners/{runner_id}/stop", data="[]", headers={"Content-Type": "application/json"}
    )
    assert_error(status, answer, 400, "INVALID_REQUEST")
    await _heartbeats(api, runner_id, 1)
    assert (await _runner(api, runner_id))["status"] == "active"
    assert agent.state == "running"


async def test_control_of_a_runner_without_an_agent_is_runner_unavailable(coordinator: CoordinatorHandle) -> None:
    api = coordinator.api
    runner_id = (await register_runner(api, type="native"))["runner_id"]
    for action in ("stop", "start", "restart"):
        status, body = await api.post(f"/runners/{runner_id}/{action}")
        assert_error(status, body, 503, "RUNNER_UNAVAILABLE", runner_id=runner_id)
    assert (await _runner(api, runner_id))["status"] == "active", "a failed control call changed the status"
    missing = "runner_00000000-0000-4000-8000-000000000000"
    status, body = await api.post(f"/runners/{missing}/stop")
    assert_error(status, body, 404, "RUNNER_NOT_FOUND", runner_id=missing)
