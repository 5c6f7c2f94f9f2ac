"""``WS /runners/ws``: authentication, the events and their shape, filters, slow clients and shutdown."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator import keys
from tests.conftest import API_KEY, CoordinatorHandle, StartAgent, coordinator_config, running_coordinator
from tests.helpers import ISO_UTC_PATTERN, assert_error, free_port, register_runner, wait_for

SPEC_STATUS_CHANGE_KEYS = {"type", "runner_id", "old_status", "new_status", "timestamp"}


def ws_url(coordinator: CoordinatorHandle, query: str = "") -> str:
    return f"{coordinator.api_url}/runners/ws" + (f"?{query}" if query else "")


def connect(coordinator: CoordinatorHandle, query: str = "", **kw: Any) -> Any:
    headers = kw.pop("headers", {"X-API-Key": API_KEY})
    return coordinator.api.session.ws_connect(ws_url(coordinator, query), headers=headers, **kw)


async def next_event(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    event = json.loads(message.data)
    assert re.match(ISO_UTC_PATTERN, event["timestamp"]), event
    return dict(event)


async def until(ws: aiohttp.ClientWebSocketResponse, wanted: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The first event for which ``wanted(event)`` holds (events before it are skipped)."""
    while True:
        event = await next_event(ws, timeout)
        if wanted(event):
            return event


async def connected(coordinator: CoordinatorHandle, count: int) -> None:
    assert coordinator.app is not None
    hub = coordinator.app[keys.HUB]
    await wait_for(lambda: _equals(hub.client_count, count), what=f"{count} WebSocket client(s)")


async def _equals(value: int, expected: int) -> bool:
    return value == expected


# --- authentication ------------------------------------------------------------------------------------------


async def test_browsers_authenticate_with_a_single_use_ticket(coordinator: CoordinatorHandle) -> None:
    status, issued = await coordinator.api.post("/tickets")
    assert status == 201, issued
    async with connect(coordinator, f"ticket={issued['ticket']}", headers={}) as ws:
        await connected(coordinator, 1)
        runner_id = (await register_runner(coordinator.api))["runner_id"]
        event = await next_event(ws)
        assert (event["type"], event["runner_id"]) == ("runner_registered", runner_id)

    # No credential, a long-lived one in the URL, or the same ticket again: refused before the upgrade.
    for query in ("", f"token={API_KEY}", "token=not-the-key-0123456789", f"ticket={issued['ticket']}"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with connect(coordinator, query, headers={}):
                pass
        assert refused.value.status == 401, query
    anonymous = coordinator.client(api_key=None)
    code, body = await anonymous.get(f"/runners?token={API_KEY}")
    assert_error(code, body, 401, "AUTHENTICATION_REQUIRED", parameter="token")


async def test_an_unknown_event_type_is_refused_before_the_upgrade(coordinator: CoordinatorHandle) -> None:
    code, body = await coordinator.api.get("/runners/ws?events=runner_registered,bogus")
    error = assert_error(code, body, 400, "INVALID_REQUEST", field="events")
    assert "bogus" in error["message"]


# --- the events ----------------------------------------------------------------------------------------------


async def test_agent_stop_and_start_send_runner_status_change_as_the_spec_shows(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(state_name="a")
    runner_id = agent.identity().runner_id
    async with connect(coordinator, f"runner_id={runner_id}&events=runner_status_change") as ws:
        await connected(coordinator, 1)
        await agent.stop(timeout=2)
        gone = await until(ws, lambda e: e["new_status"] == "inactive")
        assert set(gone) == SPEC_STATUS_CHANGE_KEYS
        assert gone["type"] == "runner_status_change"
        assert gone["runner_id"] == runner_id
        assert gone["old_status"] in ("active", "stopped")

        again = await start_agent(state_name="a")  # same state directory: the same runner comes back
        assert again.identity().runner_id == runner_id
        back = await until(ws, lambda e: e["new_status"] == "active")
        assert set(back) == SPEC_STATUS_CHANGE_KEYS
        assert (back["runner_id"], back["old_status"]) == (runner_id, "inactive")


async def test_register_update_and_delete_are_announced(coordinator: CoordinatorHandle) -> None:
    api = coordinator.api
    async with connect(coordinator) as ws:
        await connected(coordinator, 1)
        runner_id = (await register_runner(api, host="127.0.0.1", port=free_port()))["runner_id"]
        registered = await until(ws, lambda e: e["type"] == "runner_registered")
        assert registered["runner_id"] == runner_id

        code, body = await api.put(f"/runners/{runner_id}", {"name": "renamed"})
        assert code == 200, body
        updated = await until(ws, lambda e: e["type"] == "runner_updated")
        assert updated["runner_id"] == runner_id

        code, body = await api.delete(f"/runners/{runner_id}")
        assert code == 200, body
        deleted = await until(ws, lambda e: e["type"] == "runner_deleted")
        assert deleted["runner_id"] == runner_id


async def test_a_job_reports_each_status_change(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    async with connect(coordinator, f"runner_id={runner_id}&events=job_status_change") as ws:
        await connected(coordinator, 1)
        code, body = await coordinator.api.post(
            f"/runners/{runner_id}/jobs", {"name": "hello", "steps": [{"name": "greet", "run": "echo hi"}]}
        )
        assert code == 201, body
        job_id = body["job_id"]
        changes = []
        while not changes or changes[-1][1] != "completed":
            event = await next_event(ws)
            assert event["type"] == "job_status_change"
            assert (event["runner_id"], event["job_id"]) == (runner_id, job_id)
            changes.append((event["old_status"], event["new_status"]))
    assert ("queued", "running") in changes
    assert changes[-1] == ("running", "completed")


async def test_a_client_gets_only_the_runner_and_event_types_it_asked_for(coordinator: CoordinatorHandle) -> None:
    api = coordinator.api
    mine = (await register_runner(api, host="127.0.0.1", port=free_port()))["runner_id"]
    other = (await register_runner(api, host="127.0.0.1", port=free_port()))["runner_id"]
    async with (
        connect(coordinator, f"runner_id={mine}") as one_runner,
        connect(coordinator, "events=runner_deleted") as deletions,
    ):
        await connected(coordinator, 2)
        for runner_id in (other, mine):
            code, body = await api.put(f"/runners/{runner_id}", {"tags": ["x"]})
            assert code == 200, body
        code, body = await api.delete(f"/runners/{other}")
        assert code == 200, body
        first = await next_event(one_runner)
        assert (first["type"], first["runner_id"]) == ("runner_updated", mine)
        first = await next_event(deletions)
        assert (first["type"], first["runner_id"]) == ("runner_deleted", other)


# --- slow clients and shutdown -------------------------------------------------------------------------------


@pytest.fixture
async def small_queue_coordinator(tmp_path: Path) -> AsyncIterator[CoordinatorHandle]:
    async with running_coordinator(
        coordinator_config(tmp_path / "small-queue", websocket={"queue_limit": 32})
    ) as handle:
        yield handle


async def test_a_client_that_never_reads_is_closed_with_1008_and_the_others_keep_up(
    small_queue_coordinator: CoordinatorHandle,
) -> None:
    coordinator = small_queue_coordinator
    assert coordinator.app is not None
    hub = coordinator.app[keys.HUB]
    padding = "x" * 16 * 1024  # fills the socket buffers of the client that does not read in few events
    async with connect(coordinator) as slow, connect(coordinator) as fast:
        await connected(coordinator, 2)
        published = 0
        # Publish until the hub gives up on the reader that never reads; the other one reads each event as it
        # comes, so publishing only ever waits for the client that keeps up.
        while hub.slow_disconnects == 0:
            assert published < 20_000, "the client that never reads was never disconnected"
            hub.publish(
                {
                    "type": "runner_updated",
                    "runner_id": "r",
                    "timestamp": "2024-01-15T10:30:00Z",
                    "n": published,
                    "padding": padding,
                }
            )
            assert (await next_event(fast))["n"] == published
            published += 1
        # The other client goes on receiving.
        for n in range(published, published + 5):
            hub.publish({"type": "runner_updated", "runner_id": "r", "timestamp": "2024-01-15T10:30:00Z", "n": n})
            assert (await next_event(fast))["n"] == n
        # The slow client, once it reads, finds what was already on its way, then the close frame.
        received = 0
        while True:
            message = await slow.receive(timeout=10)
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            assert json.loads(message.data)["n"] == received
            received += 1
        assert message.type is aiohttp.WSMsgType.CLOSE, message
        assert message.data == aiohttp.WSCloseCode.POLICY_VIOLATION
        assert "too slow" in message.extra
        assert received < published
        await connected(coordinator, 1)


async def test_shutdown_tells_clients_the_coordinator_is_going_away(coordinator: CoordinatorHandle) -> None:
    async with connect(coordinator) as ws:
        await connected(coordinator, 1)
        await coordinator.stop()
        message = await ws.receive(timeout=10)
        assert message.type is aiohttp.WSMsgType.CLOSE, message
        assert message.data == aiohttp.WSCloseCode.GOING_AWAY
