"""Several coordinators on one PostgreSQL database serve one fleet: real processes, one real server.

Each coordinator is ``python -m coordinator`` with the same ``RUSTCI_DATABASE`` and its own state directory and
port; agents are ``python -m agent`` given the coordinators' URLs. Everything is checked through the public API
of a coordinator other than the one holding the agent's channel.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.conftest import API_KEY, REGISTRATION_KEY, StartAgentProcess, wait_http_ok
from tests.helpers import TERMINAL, Api, DaemonProcess, free_port, wait_for, wait_process_runner
from tests.reliability.common import job_output

pytestmark = pytest.mark.timeout(240)

StartCoordinator = Callable[..., "Node"]


class Node:
    """One coordinator process of the fleet."""

    def __init__(self, proc: DaemonProcess, port: int, state_dir: Path) -> None:
        self.proc, self.port, self.state_dir = proc, port, state_dir
        self.url = f"http://127.0.0.1:{port}"
        self.api = Api(f"{self.url}/api", API_KEY)


@pytest.fixture
async def fleet(tmp_path: Path, postgres_url: str) -> AsyncIterator[StartCoordinator]:
    """``node = fleet("a")``: a coordinator on the test's database (``configured_keys=False``: it generates its
    keys, or takes the fleet's); stopped by PID at teardown."""
    nodes: list[Node] = []

    def start(name: str, configured_keys: bool = True, port: int | None = None, **extra: str) -> Node:
        port = port or free_port()
        state_dir = tmp_path / f"coordinator-{name}"
        env = {
            "RUSTCI_STATE_DIR": str(state_dir),
            "RUSTCI_DATABASE": postgres_url,
            "RUSTCI_LISTEN_PORT": str(port),
            "RUSTCI_LISTEN_HOST": "127.0.0.1",
            "RUSTCI_RATE_LIMITS_ENABLED": "false",
            **({"RUSTCI_API_KEY": API_KEY, "RUSTCI_REGISTRATION_KEY": REGISTRATION_KEY} if configured_keys else {}),
            **extra,
        }
        proc = DaemonProcess("coordinator", env, tmp_path / f"coordinator-{name}.log").start()
        node = Node(proc, port, state_dir)
        nodes.append(node)
        return node

    try:
        yield start
    finally:
        for node in nodes:
            await node.api.close()
            await node.proc.stop(timeout=10)


async def _up(*nodes: Node) -> None:
    await asyncio.gather(*(wait_http_ok(f"{n.url}/api/health", timeout=30) for n in nodes))


def _job(name: str, run: str) -> dict[str, object]:
    return {"name": name, "steps": [{"name": "s", "run": run}]}


async def test_three_coordinators_started_at_once_migrate_the_database_once(
    fleet: StartCoordinator, postgres_url: str
) -> None:
    nodes = [fleet(name) for name in "abc"]
    await _up(*nodes)
    conn = await asyncpg.connect(postgres_url)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
    finally:
        await conn.close()
    assert versions == list(range(1, len(versions) + 1)) and versions
    migrated = [n for n in nodes if "database migrated" in n.proc.log_path.read_text(errors="replace")]
    assert len(migrated) == 1, "exactly one coordinator applies the migrations"


async def test_a_second_coordinator_accepts_the_credentials_the_first_generated(fleet: StartCoordinator) -> None:
    first = fleet("a", configured_keys=False)
    await _up(first)
    second = fleet("b", configured_keys=False)
    await _up(second)
    admin_key = (first.state_dir / "admin-api-key").read_text().strip()
    async with aiohttp.ClientSession() as session:
        for node in (first, second):
            async with session.get(f"{node.url}/api/runners", headers={"X-API-Key": admin_key}) as r:
                assert r.status == 200, await r.text()


async def test_a_job_submitted_through_one_coordinator_runs_on_an_agent_connected_to_another(
    fleet: StartCoordinator, agent_process: StartAgentProcess
) -> None:
    holder, other = fleet("a"), fleet("b")
    await _up(holder, other)
    agent = agent_process(holder.url)
    runner_id = await wait_process_runner(holder.api, agent, timeout=30)

    async with other.api.session.ws_connect(
        f"{other.url}/api/runners/ws?events=job_status_change", headers={"X-API-Key": API_KEY}
    ) as ws:
        status, body = await other.api.post(f"/runners/{runner_id}/jobs", _job("across", "echo hello; echo world"))
        assert status == 201, body
        job_id = body["job_id"]
        seen: list[str] = []
        while "completed" not in seen:
            message = await ws.receive(timeout=30)
            assert message.type is aiohttp.WSMsgType.TEXT, message
            event = json.loads(message.data)
            if event.get("job_id") == job_id:
                seen.append(event["new_status"])
    assert seen[-1] == "completed", seen
    assert await job_output(other.api, runner_id, job_id) == ["hello", "world"]
    # Calls to the agent made through the coordinator that does not hold its channel reach it.
    status, health = await other.api.get(f"/runners/{runner_id}/health")
    assert status == 200 and health["runner_id"] == runner_id, health
    status, state = await other.api.get(f"/runners/{runner_id}/status")
    assert status == 200, state


async def test_sigkill_of_the_coordinator_holding_the_channel_loses_and_doubles_nothing(
    fleet: StartCoordinator, agent_process: StartAgentProcess
) -> None:
    holder, other = fleet("a"), fleet("b")
    await _up(holder, other)
    agent = agent_process(
        holder.url, RUSTCI_COORDINATOR_URLS=f"{holder.url},{other.url}", RUSTCI_MAX_CONCURRENT_JOBS="4"
    )
    runner_id = await wait_process_runner(holder.api, agent, timeout=30)
    expected: dict[str, list[str]] = {}
    for n in range(40):
        status, body = await other.api.post(
            f"/runners/{runner_id}/jobs", _job(f"j{n}", f"echo first-{n}; sleep 0.1; echo last-{n}")
        )
        assert status == 201, body
        expected[body["job_id"]] = [f"first-{n}", f"last-{n}"]

    async def some_done() -> bool:
        status, body = await other.api.get(f"/runners/{runner_id}/jobs?status=completed&limit=1")
        return status == 200 and body["total_count"] >= 5

    await wait_for(some_done, 60, interval=0.05, what="the first jobs to finish")
    assert holder.proc.proc is not None
    holder.proc.proc.kill()
    assert await holder.proc.wait_exit(10) == -signal.SIGKILL

    async def all_ended() -> dict[str, str] | None:
        status, body = await other.api.get(f"/runners/{runner_id}/jobs?limit=1000")
        assert status == 200, body
        seen = {job["job_id"]: job["status"] for job in body["jobs"]}
        return seen if all(seen.get(j) in TERMINAL for j in expected) else None

    seen = await wait_for(all_ended, 120, interval=0.2, what="every job to end after the failover")
    assert set(seen) == set(expected)
    assert {s for s in seen.values()} == {"completed"}, seen
    for job_id, lines in expected.items():
        assert await job_output(other.api, runner_id, job_id) == lines, job_id
    assert agent.alive()


async def test_agents_on_different_coordinators_each_get_the_jobs_submitted_through_the_other(
    fleet: StartCoordinator, agent_process: StartAgentProcess
) -> None:
    a, b = fleet("a"), fleet("b")
    await _up(a, b)
    on_a = await wait_process_runner(a.api, agent_process(a.url, state_name="agent-a"), timeout=30)
    on_b = await wait_process_runner(b.api, agent_process(b.url, state_name="agent-b"), timeout=30)
    crossed = {}
    for through, runner_id in ((b, on_a), (a, on_b)):
        status, body = await through.api.post(f"/runners/{runner_id}/jobs", _job("crossed", f"echo to-{runner_id}"))
        assert status == 201, body
        crossed[body["job_id"]] = (through, runner_id)
    for job_id, (through, runner_id) in crossed.items():
        job = await through.api.wait_job(runner_id, job_id, TERMINAL, timeout=30)
        assert job["status"] == "completed", job
        assert await job_output(through.api, runner_id, job_id) == [f"to-{runner_id}"]
    # Each coordinator lists both runners, active: one registry.
    for node in (a, b):
        status, body = await node.api.get("/runners?status=active")
        assert status == 200 and {r["id"] for r in body["runners"]} == {on_a, on_b}, body
