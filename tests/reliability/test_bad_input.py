"""Input no process can take is refused at submission; a job that fails in an unexpected way still ends."""

from __future__ import annotations

from typing import Any

import pytest

from agent.executors.base import JobContext, OutputSink, StepContext
from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import assert_error, submit_job


def _job(**step: Any) -> dict[str, Any]:
    return {"name": "bad-input", "steps": [{"name": "s0", "run": "true", **step}]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_job(run="echo a\u0000b"), "steps[0].run"),
        (_job(env={"X": "a\u0000b"}), "steps[0].env.X"),
        (_job(working_directory="sub\u0000dir"), "steps[0].working_directory"),
        ({**_job(), "environment": {"Y": "\u0000"}}, "environment.Y"),
        (_job(run="echo \ud800"), "steps[0].run"),
    ],
    ids=["run-nul", "env-nul", "workdir-nul", "environment-nul", "run-lone-surrogate"],
)
async def test_text_execve_cannot_take_is_refused_with_400_naming_the_field(
    coordinator: CoordinatorHandle, start_agent: StartAgent, body: dict[str, Any], field: str
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    status, answer = await coordinator.api.post(f"/runners/{runner_id}/jobs", body)
    error = assert_error(status, answer, 400, "INVALID_REQUEST", field=field)
    assert field in error["message"]
    status, jobs = await coordinator.api.get(f"/runners/{runner_id}/jobs")
    assert status == 200 and jobs["jobs"] == [], "a refused job must not be stored"


class _Exploding:
    """Wraps the real executor; every step raises an error no layer below the supervisor expects."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def run_step(self, context: JobContext, step: StepContext, sink: OutputSink) -> int | None:
        raise ValueError("embedded null byte")


async def test_an_unexpected_error_while_running_a_step_ends_the_job_failed_with_a_reason(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    agent.job_runner.executor = _Exploding(agent.job_runner.executor)  # type: ignore[assignment]
    job_id = await submit_job(coordinator.api, runner_id, "explodes", "echo never")
    job = await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed", "timed_out", "cancelled"})
    assert job["status"] == "failed", job
    assert "ValueError" in str(job.get("error") or job), job
    # The agent is not wedged: the next job runs normally once the executor behaves again.
    agent.job_runner.executor = agent.job_runner.executor._inner  # type: ignore[attr-defined]
    second = await submit_job(coordinator.api, runner_id, "fine", "echo ok")
    assert (await coordinator.api.wait_job(runner_id, second, {"completed", "failed"}))["status"] == "completed"
