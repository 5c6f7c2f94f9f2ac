"""The daemons' JSON logs as an operator reads them: every line names its component, and the coordinator's
access log is written at ``debug`` only (and follows a reload of the level)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import API_KEY, CoordinatorHandle, StartAgentProcess
from tests.helpers import free_port, wait_for, wait_process_runner
from tests.ops.daemons import coordinator_daemon


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is JSON
    return parsed


async def get(port: int, path: str) -> int:
    async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status


async def wait_health(port: int) -> None:
    async def up() -> bool:
        try:
            return await get(port, "/api/health") == 200
        except aiohttp.ClientError:
            return False

    await wait_for(up, timeout=20, what="the coordinator to answer")


def access_lines(text: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(text) if line.get("event") == "http request"]


async def test_access_log_at_debug_only_and_after_a_reload(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "coordinator.yaml"
    config.write_text("log: {level: info, format: json}\n")
    async with coordinator_daemon(tmp_path, port, RUSTCI_CONFIG=str(config)) as proc:
        await wait_health(port)
        assert await get(port, "/api/runners/runner_nope") == 404
        lines = json_lines(proc.log())
        assert lines and all(line["component"] == "coordinator" for line in lines), lines
        assert access_lines(proc.log()) == []

        config.write_text("log: {level: debug, format: json}\n")
        proc.signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return "configuration reloaded" in proc.log()

        await wait_for(reloaded, timeout=10, what="the reload")
        assert await get(port, "/api/runners/runner_nope") == 404

        async def logged() -> list[dict[str, Any]]:
            return access_lines(proc.log())

        (line,) = await wait_for(logged, timeout=10, what="an access log line")
        assert line["method"] == "GET" and line["route"] == "/api/runners/{runner_id}" and line["status"] == 404
        assert line["principal"] == "key:admin" and line["duration_ms"] >= 0 and line["level"] == "debug"
        assert line["component"] == "coordinator"


async def test_agent_lines_name_their_component(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess
) -> None:
    proc = agent_process(coordinator.url)
    await wait_process_runner(coordinator.api, proc)
    lines = json_lines(proc.log())
    assert any(line.get("event") == "agent health and metrics listening" for line in lines)
    assert {line["component"] for line in lines} == {"agent"}
