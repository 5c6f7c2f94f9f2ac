"""API edges an operator trips over: a followed job log ends with the job, ``/status`` counts the jobs the
coordinator holds, and a bulk request must say which runners it acts on."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.conftest import API_KEY, CoordinatorHandle, StartAgent
from tests.helpers import assert_error, free_port, register_runner, submit_job


async def follow(coordinator: CoordinatorHandle, runner_id: str, job_id: str) -> list[str]:
    """The messages of a followed job log, read until the server ends the stream (bounded by the test)."""
    messages = []
    url = f"{coordinator.api_url}/runners/{runner_id}/logs"
    params = {"follow": "true", "job_id": job_id}
    async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as session:
        async with session.get(url, params=params, headers={"Last-Event-ID": "0"}) as response:
            assert response.status == 200
            async with asyncio.timeout(30):
                async for raw in response.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("data:"):
                        messages.append(json.loads(line[5:])["message"])
    return messages


async def test_following_a_job_ends_after_its_last_line(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    runner_id = (await start_agent()).identity().runner_id
    finished = await submit_job(coordinator.api, runner_id, "done", "echo first", "echo last")
    await coordinator.api.wait_job(runner_id, finished, {"completed"})
    messages = await follow(coordinator, runner_id, finished)
    assert messages.index("first") < messages.index("last")

    # Followed while it runs: every line, then the end of the stream once the job is over.
    running = await submit_job(coordinator.api, runner_id, "slow", "echo one; sleep 0.5; echo two", "echo three")
    messages = await follow(coordinator, runner_id, running)
    printed = [m for m in messages if m in ("one", "two", "three")]
    assert printed == ["one", "two", "three"]
    assert (await coordinator.api.job(runner_id, running))["status"] == "completed"


async def test_status_counts_the_jobs_the_coordinator_holds(coordinator: CoordinatorHandle) -> None:
    runner_id = (await register_runner(coordinator.api, port=free_port()))["runner_id"]  # no agent behind it
    for n in range(3):
        await submit_job(coordinator.api, runner_id, f"held-{n}", "true")
    status, view = await coordinator.api.get(f"/runners/{runner_id}/status")
    assert status == 200 and view["status"] == "inactive"
    assert view["current_load"]["queued_jobs"] == 3


async def test_status_of_a_stopped_runner_counts_held_jobs_too(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    runner_id = (await start_agent()).identity().runner_id
    status, _ = await coordinator.api.post(f"/runners/{runner_id}/stop")
    assert status == 200
    await submit_job(coordinator.api, runner_id, "held", "true")
    status, view = await coordinator.api.get(f"/runners/{runner_id}/status")
    assert status == 200 and view["current_load"]["queued_jobs"] == 1


async def test_bulk_needs_filters_and_empty_filters_mean_every_runner(coordinator: CoordinatorHandle) -> None:
    ids = {(await register_runner(coordinator.api, port=free_port()))["runner_id"] for _ in range(2)}
    for body in ({"operation": "delete"}, {"operation": "stop", "data": {"graceful": True}}):
        status, answer = await coordinator.api.post("/runners/bulk", body)
        assert_error(status, answer, 400, "INVALID_REQUEST", field="filters")
    status, listed = await coordinator.api.get("/runners")
    assert {r["id"] for r in listed["runners"]} == ids  # nothing was deleted
    status, answer = await coordinator.api.post("/runners/bulk", {"operation": "delete", "filters": {}})
    assert status == 200 and answer["affected_runners"] == 2 and answer["success"] is True
    status, listed = await coordinator.api.get("/runners")
    assert listed["total_count"] == 0


def test_the_api_description_says_bulk_filters_are_required() -> None:
    from coordinator.openapi import document

    assert set(document()["components"]["schemas"]["BulkRequest"]["required"]) == {"operation", "filters"}
