"""Jobs end to end through a real coordinator and a real agent: steps, environment, failures, listing, holding."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from tests.conftest import CoordinatorHandle, StartAgent, StartAgentProcess
from tests.helpers import (
    ISO_UTC_PATTERN,
    JOB_ID_PATTERN,
    TERMINAL,
    Api,
    free_port,
    register_runner,
    wait_for,
)


def _moment(text: str) -> datetime:
    assert re.match(ISO_UTC_PATTERN, text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _assert_timed(result: dict[str, Any]) -> None:
    """``started_at`` ≤ ``completed_at``, and ``duration`` is the time between them."""
    started, completed = _moment(result["started_at"]), _moment(result["completed_at"])
    assert started <= completed, result
    assert result["duration"] >= 0
    assert abs(result["duration"] - (completed - started).total_seconds()) < 0.01, result


async def _submit(api: Api, runner_id: str, job: dict[str, Any]) -> str:
    status, body = await api.post(f"/runners/{runner_id}/jobs", job)
    assert status == 201, body
    assert body["success"] is True
    assert body["runner_id"] == runner_id
    assert body["status"] == "queued"
    assert re.match(JOB_ID_PATTERN, body["job_id"]), body
    return str(body["job_id"])


async def test_three_step_job_completes_and_its_steps_see_the_job_environment(
    coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    out = tmp_path / "out"
    out.mkdir()
    job_id = await _submit(
        coordinator.api,
        runner_id,
        {
            "name": "test-job",
            "steps": [
                {"name": "setup", "run": 'test "$NODE_ENV" = test'},
                {"name": "build", "run": 'test "$DEBUG" = true && printf built > "$OUT/build"'},
                {"name": "test", "run": 'test -f "$OUT/build" && printf "%s:%s" "$NODE_ENV" "$DEBUG" > "$OUT/seen"'},
            ],
            "environment": {"NODE_ENV": "test", "DEBUG": "true", "OUT": str(out)},
            "timeout": 300,
            "retry_count": 2,
        },
    )
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL)
    assert job["status"] == "completed", job
    assert job["exit_code"] == 0
    assert job["job_id"] == job_id and job["runner_id"] == runner_id and job["name"] == "test-job"
    _assert_timed(job)
    assert _moment(job["created_at"]) <= _moment(job["started_at"])
    assert [s["name"] for s in job["steps"]] == ["setup", "build", "test"]
    for step in job["steps"]:
        assert set(step) >= {"name", "status", "exit_code", "started_at", "completed_at", "duration"}
        assert (step["status"], step["exit_code"]) == ("completed", 0), step
        _assert_timed(step)
    # steps ran in order
    ends = [_moment(s["completed_at"]) for s in job["steps"]]
    starts = [_moment(s["started_at"]) for s in job["steps"]]
    assert starts[1] >= ends[0] and starts[2] >= ends[1]
    assert (out / "build").read_text() == "built"
    assert (out / "seen").read_text() == "test:true"


async def test_a_step_env_overrides_the_job_environment_for_that_step_only(
    coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    job_id = await _submit(
        coordinator.api,
        runner_id,
        {
            "name": "env-override",
            "steps": [
                {
                    "name": "deploy",
                    "run": 'test "$NODE_ENV" = production && printf "%s" "$NODE_ENV" > "$OUT/deploy"',
                    "env": {"NODE_ENV": "production"},
                },
                {"name": "after", "run": 'test "$NODE_ENV" = test && printf "%s" "$NODE_ENV" > "$OUT/after"'},
            ],
            "environment": {"NODE_ENV": "test", "OUT": str(tmp_path)},
        },
    )
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL)
    assert job["status"] == "completed", job
    assert [(s["status"], s["exit_code"]) for s in job["steps"]] == [("completed", 0), ("completed", 0)]
    assert (tmp_path / "deploy").read_text() == "production"
    assert (tmp_path / "after").read_text() == "test"


async def test_a_failing_step_fails_the_job_with_its_exit_code_and_skips_the_rest(
    coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    marker = tmp_path / "never"
    job_id = await _submit(
        coordinator.api,
        runner_id,
        {
            "name": "fails",
            "steps": [
                {"name": "ok", "run": "true"},
                {"name": "broken", "run": "exit 7"},
                {"name": "later", "run": f"touch {marker}"},
                {"name": "last", "run": f"touch {marker}"},
            ],
        },
    )
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL)
    assert job["status"] == "failed", job
    assert job["exit_code"] == 7
    assert "broken" in (job["reason"] or "")
    ok, broken, later, last = job["steps"]
    assert (ok["status"], ok["exit_code"]) == ("completed", 0)
    assert (broken["status"], broken["exit_code"]) == ("failed", 7)
    _assert_timed(broken)
    for skipped in (later, last):
        assert skipped["status"] == "skipped", skipped
        assert skipped["exit_code"] is None and skipped["started_at"] is None
    assert not marker.exists()
    _, runner = await coordinator.api.get(f"/runners/{runner_id}")
    assert runner["statistics"]["total_jobs_executed"] == 1
    assert runner["statistics"]["failed_jobs"] == 1
    assert runner["statistics"]["successful_jobs"] == 0


async def test_listing_a_runners_jobs_with_status_limit_and_offset(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    api = coordinator.api
    outcomes = ["true", "false", "true", "exit 3", "true"]
    jobs = [
        await _submit(api, runner_id, {"name": f"job-{n}", "steps": [{"name": "s", "run": run}]})
        for n, run in enumerate(outcomes)
    ]
    for job_id in jobs:
        await api.wait_job(runner_id, job_id, TERMINAL)
    newest_first = list(reversed(jobs))

    status, body = await api.get(f"/runners/{runner_id}/jobs")
    assert status == 200, body
    assert body["runner_id"] == runner_id
    assert body["total_count"] == 5
    assert [j["job_id"] for j in body["jobs"]] == newest_first
    for summary in body["jobs"]:
        assert set(summary) >= {"job_id", "name", "status", "created_at", "started_at", "completed_at", "duration"}
        assert "exit_code" in summary
        _assert_timed(summary)
    by_id = {j["job_id"]: j for j in body["jobs"]}
    assert [(by_id[j]["status"], by_id[j]["exit_code"]) for j in jobs] == [
        ("completed", 0),
        ("failed", 1),
        ("completed", 0),
        ("failed", 3),
        ("completed", 0),
    ]

    _, body = await api.get(f"/runners/{runner_id}/jobs?status=completed")
    assert body["total_count"] == 3
    assert [j["job_id"] for j in body["jobs"]] == [jobs[4], jobs[2], jobs[0]]
    _, body = await api.get(f"/runners/{runner_id}/jobs?status=failed")
    assert (body["total_count"], [j["job_id"] for j in body["jobs"]]) == (2, [jobs[3], jobs[1]])
    _, body = await api.get(f"/runners/{runner_id}/jobs?status=queued")
    assert (body["total_count"], body["jobs"]) == (0, [])

    _, body = await api.get(f"/runners/{runner_id}/jobs?limit=2")
    assert ([j["job_id"] for j in body["jobs"]], body["total_count"], body["has_more"]) == (newest_first[:2], 5, True)
    _, body = await api.get(f"/runners/{runner_id}/jobs?limit=2&offset=2")
    assert ([j["job_id"] for j in body["jobs"]], body["has_more"]) == (newest_first[2:4], True)
    _, body = await api.get(f"/runners/{runner_id}/jobs?limit=2&offset=4")
    assert ([j["job_id"] for j in body["jobs"]], body["has_more"]) == (newest_first[4:], False)
    _, body = await api.get(f"/runners/{runner_id}/jobs?offset=5")
    assert (body["jobs"], body["total_count"], body["has_more"]) == ([], 5, False)
    _, body = await api.get(f"/runners/{runner_id}/jobs?status=failed&limit=1&offset=1")
    assert ([j["job_id"] for j in body["jobs"]], body["total_count"], body["has_more"]) == ([jobs[1]], 2, False)

    _, runner = await api.get(f"/runners/{runner_id}")
    stats = runner["statistics"]
    assert (stats["total_jobs_executed"], stats["successful_jobs"], stats["failed_jobs"]) == (5, 3, 2)
    assert stats["average_execution_time"] > 0


async def test_a_job_submitted_while_the_agent_is_down_runs_when_it_comes_back(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path
) -> None:
    api = coordinator.api
    port = free_port()
    first = agent_process(coordinator.url, state_name="down", port=port)

    async def registered() -> str | None:
        _, body = await api.get("/runners")
        return body["runners"][0]["id"] if body["total_count"] else None

    runner_id = await wait_for(registered, 15, what="the agent to register")
    assert await first.stop() == 0

    marker = tmp_path / "ran"
    job_id = await _submit(api, runner_id, {"name": "later", "steps": [{"name": "s", "run": f"touch {marker}"}]})
    assert (await api.job(runner_id, job_id))["status"] == "queued"
    _, queued = await api.get(f"/runners/{runner_id}/jobs?status=queued")
    assert [j["job_id"] for j in queued["jobs"]] == [job_id]

    second = agent_process(coordinator.url, state_name="down", port=port)
    job = await api.wait_job(runner_id, job_id, TERMINAL, timeout=20)
    assert job["status"] == "completed", (job, second.log()[-2000:])
    assert marker.exists()
    _, body = await api.get("/runners")
    assert [r["id"] for r in body["runners"]] == [runner_id]


async def test_sdk_flow_register_then_submit_at_once_holds_the_job_queued(coordinator: CoordinatorHandle) -> None:
    """The SDK example: register a runner through the API (nothing listens on its port), submit to it at once."""
    api = coordinator.api
    with capture_logs() as logs:
        registered = await register_runner(api, name="my-docker-runner", host="localhost", port=free_port())
        runner_id = registered["runner_id"]
        status, body = await api.post(
            f"/runners/{runner_id}/jobs", {"name": "test-job", "steps": [{"name": "test", "run": "echo Hello"}]}
        )
        assert status == 201, body
        assert re.match(JOB_ID_PATTERN, body["job_id"]), body
        assert (body["success"], body["runner_id"], body["status"]) == (True, runner_id, "queued")
        job_id = body["job_id"]

        async def held() -> bool:
            return any(e.get("event", "").startswith("job held") and e.get("job_id") == job_id for e in logs)

        await wait_for(held, 10, what="the coordinator to try the agent and hold the job")

    job = await api.job(runner_id, job_id)
    assert job["status"] == "queued", job
    assert job["started_at"] is None and job["exit_code"] is None
    assert [s["status"] for s in job["steps"]] == ["pending"]
    _, listed = await api.get(f"/runners/{runner_id}/jobs?status=queued")
    assert [j["job_id"] for j in listed["jobs"]] == [job_id]
    # held, not lost: the runner cannot be deleted without force while it waits
    status, body = await api.delete(f"/runners/{runner_id}")
    assert status == 409 and body["error"]["code"] == "RUNNER_BUSY"
