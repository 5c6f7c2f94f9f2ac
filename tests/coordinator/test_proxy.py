"""Calls the coordinator passes on to agents go over the channel the agent opened, never to its address."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from coordinator import keys
from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import DialCounter, SilentChannel, assert_error, register_runner, wait_for


async def test_a_runner_without_a_channel_is_unavailable_at_once_and_its_address_is_never_dialled(
    coordinator: CoordinatorHandle,
) -> None:
    api = coordinator.api
    async with DialCounter() as dials:
        runner_id = (await register_runner(api, host="127.0.0.1", port=dials.port))["runner_id"]
        for method, path in (("GET", "config"), ("POST", "stop"), ("POST", "start"), ("PUT", "config")):
            started = time.monotonic()
            body = {"max_concurrent_jobs": 2} if method == "PUT" else None
            status, answer = await api.request(method, f"/runners/{runner_id}/{path}", json=body)
            assert_error(status, answer, 503, "RUNNER_UNAVAILABLE", runner_id=runner_id)
            assert time.monotonic() - started < 0.5
        status, job = await api.post(
            f"/runners/{runner_id}/jobs", {"name": "held", "steps": [{"name": "s", "run": "true"}]}
        )
        assert status == 201
        status, view = await api.get(f"/runners/{runner_id}/status")
        assert status == 200 and view["status"] == "inactive"
        assert (await api.job(runner_id, job["job_id"]))["status"] == "queued"
        assert dials.accepted == 0, "the coordinator connected to a runner's registered address"


async def test_a_channel_needs_the_runners_own_token(coordinator: CoordinatorHandle) -> None:
    mine = await register_runner(coordinator.api)
    other = await register_runner(coordinator.api)
    url = f"{coordinator.url}/api/runners/{mine['runner_id']}/channel"
    async with aiohttp.ClientSession() as session:
        for headers, expected in (
            ({}, 401),
            ({"Authorization": f"Bearer {other['registration_token']}"}, 403),
            ({"X-API-Key": "wrong"}, 401),
        ):
            try:
                async with session.ws_connect(url, headers=headers):
                    raise AssertionError(f"the channel opened with {headers}")
            except aiohttp.WSServerHandshakeError as e:
                assert e.status == expected, (headers, e.status)
    assert coordinator.app is not None
    assert not coordinator.app[keys.AGENTS].connected(mine["runner_id"])


async def test_a_channel_that_closes_fails_the_calls_waiting_on_it_at_once(coordinator: CoordinatorHandle) -> None:
    runner = await register_runner(coordinator.api)
    runner_id = runner["runner_id"]
    async with SilentChannel(coordinator.url, runner_id, runner["registration_token"]) as channel:
        call = asyncio.create_task(coordinator.api.get(f"/runners/{runner_id}/config"))
        await wait_for(lambda: _has(channel.kinds(), "config_get"), 5, what="the call to reach the agent")
        started = time.monotonic()
        await channel.close()
        status, body = await call
    assert_error(status, body, 503, "RUNNER_UNAVAILABLE", runner_id=runner_id)
    assert time.monotonic() - started < 1.0  # not the request timeout


async def test_a_newer_connection_replaces_the_older_one(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    identity = agent.identity()
    first = agent.channel.connects
    async with SilentChannel(coordinator.url, identity.runner_id, identity.token) as impostor:
        # The agent's connection was closed; it reconnects and replaces the silent one in turn.
        await wait_for(lambda: _true(agent.channel.connects > first), 10, what="the agent to reconnect")
        await wait_for(lambda: _true(impostor.ws is not None and impostor.ws.closed), 10, what="the older one closed")
    status, body = await coordinator.api.get(f"/runners/{identity.runner_id}/config")
    assert status == 200 and body["runner_id"] == identity.runner_id


async def _has(items: list[str], item: str) -> bool:
    return item in items


async def _true(value: bool) -> bool:
    return value
