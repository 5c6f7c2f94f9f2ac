"""The registry and the job index live in the database (SQLite or PostgreSQL): a restarted coordinator shows
exactly what it showed before."""

from __future__ import annotations

from typing import Any

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, Api, free_port, register_runner


async def _snapshot(api: Api) -> dict[str, Any]:
    """Everything the read API shows: the list, every runner, its jobs, and every job in detail."""
    status, listed = await api.get("/runners?limit=1000")
    assert status == 200, listed
    shot: dict[str, Any] = {"list": listed, "runners": {}, "jobs": {}, "job_lists": {}}
    for runner in listed["runners"]:
        runner_id = runner["id"]
        _, shot["runners"][runner_id] = await api.get(f"/runners/{runner_id}")
        _, jobs = await api.get(f"/runners/{runner_id}/jobs?limit=1000")
        shot["job_lists"][runner_id] = jobs
        for job in jobs["jobs"]:
            shot["jobs"][job["job_id"]] = await api.job(runner_id, job["job_id"])
    for query in ("status=inactive", "type=docker", "tags=production,edge", "limit=2&offset=1"):
        _, shot[query] = await api.get(f"/runners?{query}")
    return shot


async def test_a_restarted_coordinator_shows_the_same_runners_and_jobs(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    api = coordinator.api
    # Runners registered through the API, one updated, one deleted, one holding a queued job.
    edge = (await register_runner(api, name="edge", tags=["production", "edge"]))["runner_id"]
    await register_runner(api, name="k8s", type="kubernetes", tags=["staging"], resources={"cpu_cores": 2})
    gone = (await register_runner(api, name="gone"))["runner_id"]
    status, _ = await api.put(
        f"/runners/{edge}", {"name": "edge-renamed", "metadata": {"zone": "eu-1"}, "capabilities": ["arm64"]}
    )
    assert status == 200
    status, _ = await api.delete(f"/runners/{gone}")
    assert status == 200
    held = await api.post(f"/runners/{edge}/jobs", {"name": "held", "steps": [{"name": "s", "run": "true"}]})
    assert held[0] == 201, held

    # A real agent runs a passing and a failing job, then stops; liveness marks its runner inactive.
    agent = await start_agent(runner={"name": "native-1", "tags": ["native"]})
    native = agent.identity().runner_id
    jobs = []
    for name, run in (("passes", "echo ok"), ("fails", "echo no; exit 4")):
        status, body = await api.post(
            f"/runners/{native}/jobs",
            {"name": name, "steps": [{"name": "one", "run": run}, {"name": "two", "run": "true"}]},
        )
        assert status == 201, body
        jobs.append(body["job_id"])
    for job_id in jobs:
        await api.wait_job(native, job_id, TERMINAL)
    await agent.stop(timeout=2)
    await api.wait_runner_status(native, "inactive", timeout=5)

    before = await _snapshot(api)
    assert before["list"]["total_count"] == 3
    assert len(before["jobs"]) == 3
    assert before["jobs"][held[1]["job_id"]]["status"] == "queued"
    assert [before["jobs"][j]["status"] for j in jobs] == ["completed", "failed"]
    assert before["runners"][native]["statistics"]["total_jobs_executed"] == 2

    old_app = coordinator.app
    await coordinator.restart()
    assert coordinator.app is not old_app
    after = await _snapshot(api)

    assert after["list"] == before["list"]
    for runner_id, runner in before["runners"].items():
        assert after["runners"][runner_id] == runner, runner_id
    for runner_id, listing in before["job_lists"].items():
        assert after["job_lists"][runner_id] == listing, runner_id
    for job_id, job in before["jobs"].items():
        assert after["jobs"][job_id] == job, job_id
    assert after == before

    # spot checks that the snapshot holds what was written, not only the same thing twice
    renamed = after["runners"][edge]
    assert (renamed["name"], renamed["capabilities"], renamed["metadata"]["zone"]) == (
        "edge-renamed",
        ["arm64"],
        "eu-1",
    )
    assert renamed["metadata"]["os"] == "linux"
    failed = after["jobs"][jobs[1]]
    assert (failed["exit_code"], [s["status"] for s in failed["steps"]]) == (4, ["failed", "skipped"])
    status, body = await api.get(f"/runners/{gone}")
    assert (status, body["error"]["code"]) == (404, "RUNNER_NOT_FOUND")
    if coordinator.config.database_engine == "sqlite":
        assert coordinator.config.database_path.exists()


async def test_writes_after_a_restart_land_in_the_same_database(coordinator: CoordinatorHandle) -> None:
    api = coordinator.api
    first = (await register_runner(api, name="before", port=free_port()))["runner_id"]
    await coordinator.restart()
    second = (await register_runner(api, name="after", port=free_port()))["runner_id"]
    await coordinator.restart()
    _, body = await api.get("/runners")
    assert [(r["id"], r["name"]) for r in body["runners"]] == [(first, "before"), (second, "after")]
    assert body["total_count"] == 2
