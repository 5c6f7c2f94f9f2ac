"""The shortest path through the system: register by agent, submit, see the job complete."""

from __future__ import annotations

from tests.conftest import CoordinatorHandle, StartAgent


async def test_job_runs_end_to_end(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    api = coordinator.api
    status, body = await api.post(
        f"/runners/{runner_id}/jobs", {"name": "hello", "steps": [{"name": "greet", "run": "echo Hello"}]}
    )
    assert status == 201, body
    job = await api.wait_job(runner_id, body["job_id"], {"completed", "failed"})
    assert job["status"] == "completed"
    assert job["exit_code"] == 0
