"""Two coordinators on one PostgreSQL database serving one fleet, with real agents.

Each coordinator is an in-process application with its own state directory, on the test's database.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent.daemon import Agent
from coordinator import keys
from coordinator.bus import PostgresBus
from tests.conftest import API_KEY, CoordinatorHandle, agent_config, coordinator_config, running_coordinator
from tests.helpers import TERMINAL, job_output, submit_job, wait_for


@contextlib.asynccontextmanager
async def fleet(postgres_url: str, tmp_path: Path, count: int = 2) -> AsyncIterator[list[CoordinatorHandle]]:
    async with contextlib.AsyncExitStack() as stack:
        handles = []
        for i in range(count):  # each with its own state directory, generating no key of its own
            config = coordinator_config(
                tmp_path / f"coordinator-{i}",
                database=postgres_url,
                auth={"api_key": API_KEY, "registration_key": None},
            )
            handle = await stack.enter_async_context(running_coordinator(config))
            assert handle.app is not None and isinstance(handle.app[keys.AGENTS].bus, PostgresBus)
            handles.append(handle)
        yield handles


async def _true(value: bool) -> bool:
    return value


@contextlib.asynccontextmanager
async def agent_at(tmp_path: Path, coordinators: list[CoordinatorHandle], key: str) -> AsyncIterator[Agent]:
    urls = [c.url for c in coordinators]
    config = agent_config(tmp_path / "agent", urls[0], coordinator={"urls": urls, "registration_key": key})
    agent = Agent(config)
    await agent.start()
    try:
        await wait_for(lambda: _true(agent.channel.connected.is_set()), 15, what="the agent's channel")
        yield agent
    finally:
        await agent.stop(timeout=2)


async def _registration_key(coordinator: CoordinatorHandle) -> str:
    assert coordinator.app is not None
    return coordinator.app[keys.CREDENTIALS].registration_key


async def test_the_coordinators_share_the_generated_registration_key(postgres_url: str, tmp_path: Path) -> None:
    async with fleet(postgres_url, tmp_path) as (a, b):
        assert await _registration_key(a) == await _registration_key(b)


async def test_a_job_and_a_call_through_the_coordinator_without_the_channel_reach_the_agent(
    postgres_url: str, tmp_path: Path
) -> None:
    async with fleet(postgres_url, tmp_path) as (a, b):
        async with agent_at(tmp_path, [b, a], await _registration_key(a)) as agent:
            runner_id = agent.identity().runner_id
            assert agent.client.root_url == b.url
            job_id = await submit_job(a.api, runner_id, "via-a", "echo crossed")
            job = await a.api.wait_job(runner_id, job_id, TERMINAL)
            assert job["status"] == "completed", job
            assert await job_output(a.api, runner_id, job_id) == ["crossed"]
            status, body = await a.api.get(f"/runners/{runner_id}/status")  # a call on b's channel
            assert status == 200, body


async def test_websocket_followers_on_one_coordinator_see_the_events_of_the_other(
    postgres_url: str, tmp_path: Path
) -> None:
    async with fleet(postgres_url, tmp_path) as (a, b):
        async with a.api.session.ws_connect(f"{a.api_url}/runners/ws", headers={"X-API-Key": API_KEY}) as ws:
            async with agent_at(tmp_path, [b, a], await _registration_key(a)) as agent:
                runner_id = agent.identity().runner_id
                job_id = await submit_job(b.api, runner_id, "seen-on-a", "true")

                async def finished() -> dict[str, Any] | None:
                    message = await ws.receive(timeout=10)
                    event = json.loads(message.data)
                    done = event.get("job_id") == job_id and event.get("new_status") == "completed"
                    return event if done else None

                await wait_for(finished, 20, interval=0, what="a's follower to see the job finish on b")


async def test_the_agent_moves_to_the_other_coordinator_when_its_own_stops_and_nothing_is_lost(
    postgres_url: str, tmp_path: Path
) -> None:
    async with fleet(postgres_url, tmp_path) as (a, b):
        async with agent_at(tmp_path, [b, a], await _registration_key(a)) as agent:
            runner_id = agent.identity().runner_id
            running = await submit_job(a.api, runner_id, "across-the-stop", "sleep 1", "echo after")
            await b.stop()  # the coordinator holding the channel goes away mid-job
            await wait_for(lambda: _true(agent.client.root_url == a.url and agent.channel.connected.is_set()), 15)
            job = await a.api.wait_job(runner_id, running, TERMINAL)
            assert job["status"] == "completed", job
            assert await job_output(a.api, runner_id, running) == ["after"]
            later = await submit_job(a.api, runner_id, "after-the-move", "echo moved")
            assert (await a.api.wait_job(runner_id, later, TERMINAL))["status"] == "completed"
            assert agent.identity().runner_id == runner_id


async def test_a_job_routed_by_tags_through_one_coordinator_runs_on_an_agent_connected_to_the_other(
    postgres_url: str, tmp_path: Path
) -> None:
    async with fleet(postgres_url, tmp_path) as (a, b):
        async with agent_at(tmp_path, [b, a], await _registration_key(a)) as agent:
            runner_id = agent.identity().runner_id
            status, body = await a.api.post(
                "/jobs", {"name": "routed", "steps": [{"name": "s", "run": "echo routed"}], "tags": ["test"]}
            )
            assert status == 201, body
            job_id = body["job_id"]

            async def done() -> dict[str, Any] | None:
                code, job = await a.api.get(f"/jobs/{job_id}")
                assert code == 200, job
                return job if job.get("status") in TERMINAL else None

            job = await wait_for(done, 20, what="the routed job to finish on the other coordinator's agent")
            assert job["status"] == "completed" and job["runner_id"] == runner_id, job
            assert await job_output(a.api, runner_id, job_id) == ["routed"]
