"""The SDK's calls for jobs routed by tags, against a live coordinator and a real agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from rustci import RustCIClient
from shared.errors import InvalidRequest, JobNotFound
from tests.conftest import API_KEY, CoordinatorHandle, StartAgent


@pytest.fixture
async def client(coordinator: CoordinatorHandle) -> AsyncIterator[RustCIClient]:
    sdk = RustCIClient(coordinator.url, api_key=API_KEY, timeout=10)
    try:
        yield sdk
    finally:
        sdk.close()


async def test_submit_by_tags_find_list_and_cancel(
    client: RustCIClient, coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(runner={"name": "sdk", "tags": ["sdk", "linux"]}, max_concurrent_jobs=2)
    runner_id = agent.identity().runner_id
    job = {"name": "via-sdk", "steps": [{"name": "s", "run": "true"}]}
    routed = await asyncio.to_thread(client.submit_job, job=job, tags=["sdk"])
    assert routed["runner_id"] == runner_id and routed["tags"] == ["sdk"]
    held = await asyncio.to_thread(client.submit_job, job=job, tags=["sdk", "windows"])
    assert held["runner_id"] is None
    found = await asyncio.to_thread(client.find_job, held["job_id"])
    assert found["runner_id"] is None and found["status"] == "queued"
    listing = await asyncio.to_thread(client.list_all_jobs, status="queued", tags=["windows"])
    assert [j["job_id"] for j in listing["jobs"]] == [held["job_id"]]
    cancelled = await asyncio.to_thread(client.cancel_job_by_id, held["job_id"])
    assert cancelled["status"] == "cancelled"
    direct = await asyncio.to_thread(client.submit_job, runner_id, job)  # runner-addressed, as before
    assert direct["runner_id"] == runner_id
    with pytest.raises(InvalidRequest):
        await asyncio.to_thread(client.submit_job, job=job, tags=["not a tag!"])  # refused before it is sent
    with pytest.raises(JobNotFound):
        await asyncio.to_thread(client.find_job, "job_missing")
