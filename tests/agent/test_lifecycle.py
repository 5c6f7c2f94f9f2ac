"""An agent's life as real ``python -m agent`` processes: restarts, a late coordinator, SIGKILL, deletion."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import API_KEY, CoordinatorHandle, StartAgentProcess, wait_http_ok
from tests.helpers import Api, DaemonProcess, free_port, wait_for


def _events(proc: DaemonProcess) -> list[dict[str, Any]]:
    """The agent's JSON log lines (anything else in the file is skipped)."""
    out = []
    for line in proc.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


async def _logged(proc: DaemonProcess, event: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        for entry in _events(proc):
            if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                return entry
        return None

    return await wait_for(probe, timeout, what=f"log event {event!r} {fields}")


async def _only_runner(api: Api, timeout: float = 15.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        _, body = await api.get("/runners")
        return body["runners"][0] if body["total_count"] == 1 else None

    return await wait_for(probe, timeout, what="exactly one runner to be registered")


async def test_a_restarted_agent_keeps_its_runner_id(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path
) -> None:
    api = coordinator.api
    port = free_port()
    first = agent_process(coordinator.url, state_name="keep", port=port)
    runner = await _only_runner(api)
    runner_id = runner["id"]
    await _logged(first, "runner registered", runner_id=runner_id)
    assert json.loads((tmp_path / "keep" / "identity.json").read_text())["runner_id"] == runner_id
    assert await first.stop() == 0

    second = agent_process(coordinator.url, state_name="keep", port=port)
    await _logged(second, "runner identity reused", runner_id=runner_id)
    after = await api.wait_runner_status(runner_id, "active")
    assert after["metadata"]["last_seen"] > runner["metadata"]["last_seen"]
    _, body = await api.get("/runners")
    assert body["total_count"] == 1
    assert [r["id"] for r in body["runners"]] == [runner_id]
    assert [e.get("event") for e in _events(second)].count("runner registered") == 1  # the first run's only


async def test_an_agent_started_before_the_coordinator_registers_once_it_is_up(
    agent_process: StartAgentProcess, coordinator_process: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    agent = agent_process(url, state_name="early")
    await _logged(agent, "coordinator unreachable; will retry registration")
    coordinator_process(port)
    await wait_http_ok(f"{url}/api/health")
    api = Api(f"{url}/api", API_KEY)
    try:
        runner = await _only_runner(api, timeout=30)
        await _logged(agent, "runner registered", runner_id=runner["id"])
        assert runner["name"] == "process-runner"
        assert (await api.wait_runner_status(runner["id"], "active"))["id"] == runner["id"]
        _, body = await api.get("/runners")
        assert body["total_count"] == 1
    finally:
        await api.close()


async def test_a_killed_agent_goes_inactive_and_active_again_after_a_restart(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess
) -> None:
    """Coordinator checks liveness every 0.05 s; the agent beats every 0.2 s: silent 3 x 0.2 s -> inactive."""
    api = coordinator.api
    port = free_port()
    agent = agent_process(coordinator.url, state_name="killed", port=port)
    runner_id = (await _only_runner(api))["id"]
    registered_seen = (await api.wait_runner_status(runner_id, "active"))["metadata"]["last_seen"]

    # Alive: heartbeats keep it active well past the 0.6 s window.
    started = time.monotonic()

    async def beat_for_a_while() -> bool:
        _, runner = await api.get(f"/runners/{runner_id}")
        assert runner["status"] == "active", runner
        return time.monotonic() - started > 1.0 and runner["metadata"]["last_seen"] > registered_seen

    await wait_for(beat_for_a_while, 10, interval=0.05, what="heartbeats over more than one liveness window")

    ws_url = f"{coordinator.api_url}/runners/ws?runner_id={runner_id}&events=runner_status_change"
    async with api.session.ws_connect(ws_url, headers={"X-API-Key": API_KEY}) as ws:
        agent.signal(signal.SIGKILL)
        killed = time.monotonic()
        await agent.wait_exit(5)
        event = json.loads((await ws.receive(timeout=5)).data)
        went_inactive = time.monotonic() - killed
        assert (event["old_status"], event["new_status"]) == ("active", "inactive"), event
        status, runner = await api.get(f"/runners/{runner_id}")
        assert (status, runner["status"]) == (200, "inactive")
        assert went_inactive < 0.6 + 1.0, went_inactive

        agent_process(coordinator.url, state_name="killed", port=port)
        event = json.loads((await ws.receive(timeout=15)).data)
        assert (event["old_status"], event["new_status"]) == ("inactive", "active"), event
    assert (await api.wait_runner_status(runner_id, "active"))["id"] == runner_id
    _, body = await api.get("/runners")
    assert [r["id"] for r in body["runners"]] == [runner_id]


async def test_an_agent_whose_runner_was_deleted_registers_anew(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path
) -> None:
    api = coordinator.api
    agent = agent_process(coordinator.url, state_name="deleted")
    old_id = (await _only_runner(api))["id"]
    await api.wait_runner_status(old_id, "active")
    status, body = await api.delete(f"/runners/{old_id}")
    assert status == 200, body

    entry = await _logged(agent, "registered as a new runner", old_runner_id=old_id)
    new_id = entry["runner_id"]
    assert new_id != old_id
    runner = await _only_runner(api)
    assert runner["id"] == new_id
    assert runner["name"] == "process-runner"
    await api.wait_runner_status(new_id, "active")
    status, body = await api.get(f"/runners/{old_id}")
    assert (status, body["error"]["code"]) == (404, "RUNNER_NOT_FOUND")
    assert json.loads((tmp_path / "deleted" / "identity.json").read_text())["runner_id"] == new_id
