"""``POST /runners/{id}/jobs/{job_id}/cancel``: queued, running, held on the coordinator, finished, unknown."""

from __future__ import annotations

from typing import Any

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, Api, ProcessMarker, assert_error, register_runner, submit_job, wait_for


async def _cancel(api: Api, runner_id: str, job_id: str) -> dict[str, Any]:
    status, body = await api.post(f"/runners/{runner_id}/jobs/{job_id}/cancel")
    assert status == 200, body
    assert body["success"] is True, body
    assert body["job_id"] == job_id, body
    assert isinstance(body["message"], str) and body["message"], body
    return dict(body)


async def test_a_queued_job_leaves_the_queue_and_never_runs(
    coordinator: CoordinatorHandle, start_agent: StartAgent, process_marker: Any
) -> None:
    agent = await start_agent(max_concurrent_jobs=1)
    runner_id = agent.identity().runner_id
    api = coordinator.api
    marker: ProcessMarker = process_marker()
    blocker = await submit_job(api, runner_id, "blocker", marker.sleep())
    await api.wait_job(runner_id, blocker, {"running"})
    queued = await submit_job(api, runner_id, "queued", "true")

    async def on_the_agent() -> bool:  # delivered: it waits in the agent's queue, not on the coordinator
        _, runner = await api.get(f"/runners/{runner_id}")
        return bool(runner["current_load"]["queued_jobs"] == 1)

    await wait_for(on_the_agent, 5, what="the job to wait in the agent's queue")
    answer = await _cancel(api, runner_id, queued)
    assert answer["status"] == "cancelled", answer
    job = await api.wait_job(runner_id, queued, TERMINAL)
    assert job["status"] == "cancelled", job

    # Free the slot; a job submitted after it runs, the cancelled one still never did.
    await _cancel(api, runner_id, blocker)
    after = await submit_job(api, runner_id, "after", "true")
    assert (await api.wait_job(runner_id, after, TERMINAL))["status"] == "completed"
    job = await api.job(runner_id, queued)
    assert job["status"] == "cancelled", job
    assert job["started_at"] is None and job["attempts"] == [], job
    assert [s["status"] for s in job["steps"]] == ["cancelled"], job
    await marker.assert_gone()


async def test_a_running_job_is_ended_with_all_its_processes(
    coordinator: CoordinatorHandle, start_agent: StartAgent, process_marker: Any
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    api = coordinator.api
    marker: ProcessMarker = process_marker()
    job_id = await submit_job(api, runner_id, "long", "true", marker.background(), "true")
    await api.wait_job(runner_id, job_id, {"running"})
    await marker.wait_running(3)  # the three sleeps (the shell runs a script file)

    answer = await _cancel(api, runner_id, job_id)
    assert answer["status"] in ("cancelled", "cancelling"), answer
    job = await api.wait_job(runner_id, job_id, TERMINAL, timeout=5)
    assert job["status"] == "cancelled", job
    assert "cancelled by user" in (job["reason"] or ""), job
    assert [s["status"] for s in job["steps"]] == ["completed", "cancelled", "cancelled"], job
    await marker.assert_gone()
    # Cancelling twice is harmless.
    again = await _cancel(api, runner_id, job_id)
    assert again["status"] == "cancelled", again


async def test_cancelling_twice_answers_200_both_times(
    coordinator: CoordinatorHandle, start_agent: StartAgent, process_marker: Any
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    api = coordinator.api
    marker: ProcessMarker = process_marker()
    job_id = await submit_job(api, runner_id, "long", marker.sleep())
    await api.wait_job(runner_id, job_id, {"running"})
    first = await _cancel(api, runner_id, job_id)
    second = await _cancel(api, runner_id, job_id)  # at once: the coordinator may not have heard back yet
    assert first["status"] in ("cancelled", "cancelling"), first
    assert second["status"] in ("cancelled", "cancelling"), second
    assert (await api.wait_job(runner_id, job_id, TERMINAL, timeout=5))["status"] == "cancelled"
    await marker.assert_gone()


async def test_a_finished_job_is_not_cancellable(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    api = coordinator.api
    done = await submit_job(api, runner_id, "quick", "true")
    failed = await submit_job(api, runner_id, "broken", "exit 2")
    for job_id, outcome in ((done, "completed"), (failed, "failed")):
        assert (await api.wait_job(runner_id, job_id, TERMINAL))["status"] == outcome
        status, body = await api.post(f"/runners/{runner_id}/jobs/{job_id}/cancel")
        error = assert_error(status, body, 409, "JOB_NOT_CANCELLABLE", job_id=job_id)
        assert error["details"]["status"] == outcome, error
        assert (await api.job(runner_id, job_id))["status"] == outcome


async def test_a_job_held_on_the_coordinator_is_cancelled_there(coordinator: CoordinatorHandle) -> None:
    api = coordinator.api
    runner_id = (await register_runner(api, type="native"))["runner_id"]  # no agent behind it
    job_id = await submit_job(api, runner_id, "held", "true")
    assert (await api.job(runner_id, job_id))["status"] == "queued"
    answer = await _cancel(api, runner_id, job_id)
    assert answer["status"] == "cancelled", answer
    job = await api.job(runner_id, job_id)
    assert job["status"] == "cancelled", job
    assert job["completed_at"] is not None and job["started_at"] is None, job
    assert (await _cancel(api, runner_id, job_id))["status"] == "cancelled"
    status, listed = await api.get(f"/runners/{runner_id}/jobs?status=queued")
    assert status == 200 and listed["total_count"] == 0, listed


async def test_unknown_jobs_and_runners_are_not_found(coordinator: CoordinatorHandle) -> None:
    api = coordinator.api
    runner_id = (await register_runner(api, type="native"))["runner_id"]
    other_runner = (await register_runner(api, type="native"))["runner_id"]
    unknown = "job_00000000-0000-4000-8000-000000000000"
    status, body = await api.post(f"/runners/{runner_id}/jobs/{unknown}/cancel")
    assert_error(status, body, 404, "JOB_NOT_FOUND", job_id=unknown)
    # A job of another runner is not found through this one, and stays as it was.
    theirs = await submit_job(api, other_runner, "theirs", "true")
    status, body = await api.post(f"/runners/{runner_id}/jobs/{theirs}/cancel")
    assert_error(status, body, 404, "JOB_NOT_FOUND", job_id=theirs)
    assert (await api.job(other_runner, theirs))["status"] == "queued"
    missing_runner = "runner_00000000-0000-4000-8000-000000000000"
    status, body = await api.post(f"/runners/{missing_runner}/jobs/{theirs}/cancel")
    assert_error(status, body, 404, "RUNNER_NOT_FOUND", runner_id=missing_runner)
