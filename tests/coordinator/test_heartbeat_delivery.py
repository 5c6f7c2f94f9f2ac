"""Heartbeats on the channel and job delivery: a heartbeat wakes the delivery worker only while something may be
held for its runner, and then delivers what is held. The agent here is a plain WebSocket client speaking the
channel protocol, so the test decides which deliveries fail."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp

from coordinator import keys
from tests.conftest import CoordinatorHandle
from tests.helpers import register_runner, submit_job

HELLO = {"id": 0, "kind": "hello", "body": {"host": "127.0.0.1", "port": 0, "state": "running"}}


def _beat(frame_id: int) -> str:
    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    sample = {"at": at, "cpu_usage": 1.0, "memory_usage": 2.0, "disk_usage": 3.0, "active_jobs": 0}
    body = {"load": {}, "state": "running", "heartbeat_interval": 10, "samples": [sample]}
    return json.dumps({"id": frame_id, "kind": "heartbeat", "body": body})


async def _next(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=10)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    frame: dict[str, Any] = json.loads(message.data)
    return frame


async def test_a_job_held_after_a_failed_delivery_goes_out_with_the_next_heartbeat(
    coordinator: CoordinatorHandle,
) -> None:
    registered = await register_runner(coordinator.api, type="native")
    runner_id, token = registered["runner_id"], registered["registration_token"]
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{coordinator.url.replace('http', 'ws', 1)}/api/runners/{runner_id}/channel"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        await ws.send_str(json.dumps(HELLO))
        assert (await _next(ws))["kind"] == "reply"  # the welcome
        # Nothing held: the first heartbeat after connecting is answered and delivers nothing.
        await ws.send_str(_beat(1))
        assert await _next(ws) == {"id": 1, "kind": "reply", "body": {"runner_id": runner_id, "status": "active"}}

        job_id = await submit_job(coordinator.api, runner_id, "held", "true")
        offered = await _next(ws)
        assert offered["kind"] == "job" and offered["body"]["job_id"] == job_id
        refusal = {"error": {"code": "RUNNER_UNAVAILABLE", "message": "busy", "details": {}}}
        await ws.send_str(json.dumps({"id": offered["id"], "kind": "error", "status": 503, "body": refusal}))
        status, job = await coordinator.api.get(f"/jobs/{job_id}")
        assert status == 200 and job["status"] == "queued"

        # The refusal left the job held: the runner's next heartbeat (its status unchanged) delivers it again.
        await ws.send_str(_beat(2))
        frames = [await _next(ws), await _next(ws)]
        kinds = {frame["kind"]: frame for frame in frames}
        assert set(kinds) == {"reply", "job"}, frames
        assert kinds["reply"]["id"] == 2 and kinds["job"]["body"]["job_id"] == job_id
        await ws.send_str(json.dumps({"id": kinds["job"]["id"], "kind": "reply", "body": {}}))

        # Accepted: nothing is held any more, and a later heartbeat offers the job no more.
        await ws.send_str(_beat(3))
        assert (await _next(ws))["id"] == 3
        await ws.send_str(_beat(4))
        assert (await _next(ws))["id"] == 4
        store = coordinator.app[keys.STORE]  # type: ignore[index]
        assert await store.undelivered_jobs(runner_id, 10) == []
