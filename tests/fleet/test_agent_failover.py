"""Agents given several coordinator URLs (``coordinator.urls``) register, connect and move between them."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from agent.config import AgentConfig
from agent.daemon import Agent
from tests.conftest import API_KEY, CoordinatorHandle, StartAgentProcess, agent_config, wait_http_ok
from tests.helpers import TERMINAL, Api, DaemonProcess, free_port, job_output, submit_job, wait_for, wait_process_runner
from tests.reliability.test_faults import _all_completed_once


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
async def failing_coordinator() -> AsyncIterator[str]:
    """A server that answers every request 503, as a coordinator that lost its database does."""

    async def unavailable(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "STORAGE_UNAVAILABLE", "message": "down"}}, status=503)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", unavailable)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def _run_a_job(coordinator: CoordinatorHandle, agent: Agent) -> None:
    runner_id = agent.identity().runner_id
    job_id = await submit_job(coordinator.api, runner_id, "through-the-fleet", "echo served")
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL)
    assert job["status"] == "completed", job
    assert await job_output(coordinator.api, runner_id, job_id) == ["served"]


async def _started(config: AgentConfig) -> Agent:
    agent = Agent(config)
    await agent.start()
    await wait_for(lambda: _true(agent.channel.connected.is_set()), 15, what="the agent's channel to open")
    return agent


@pytest.mark.parametrize("first", ["refusing", "failing"])
async def test_an_agent_registers_and_runs_jobs_through_the_next_url_when_the_first_is_dead(
    coordinator: CoordinatorHandle, failing_coordinator: str, tmp_path: Path, first: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}" if first == "refusing" else failing_coordinator
    config = agent_config(tmp_path / "agent", dead, coordinator={"urls": [dead, coordinator.url]})
    agent = await _started(config)
    try:
        assert agent.client.root_url == coordinator.url
        assert agent.identity().coordinator_url == coordinator.url
        await _run_a_job(coordinator, agent)
    finally:
        await agent.stop(timeout=2)


async def test_an_agent_moves_to_the_next_url_when_its_coordinator_stops(
    coordinator: CoordinatorHandle, tmp_path: Path
) -> None:
    # One database, two addresses: the coordinator comes back on a second port, as a second coordinator of the
    # fleet would answer there.
    second_port = free_port()
    second = f"http://127.0.0.1:{second_port}"
    config = agent_config(tmp_path / "agent", coordinator.url, coordinator={"urls": [coordinator.url, second]})
    agent = await _started(config)
    try:
        runner_id = agent.identity().runner_id
        await _run_a_job(coordinator, agent)
        connects = agent.channel.connects
        await coordinator.stop()
        coordinator.port = second_port
        await coordinator.start()
        coordinator.api.base_url = coordinator.api_url
        await wait_for(
            lambda: _true(agent.channel.connected.is_set() and agent.channel.connects > connects),
            15,
            what="the agent's channel to reopen at the second URL",
        )
        assert agent.client.root_url == second
        assert agent.identity().runner_id == runner_id  # the same runner: nothing registered anew
        await _run_a_job(coordinator, agent)
    finally:
        await agent.stop(timeout=2)


def test_coordinator_urls_come_from_the_environment_comma_separated(tmp_path: Path) -> None:
    from agent import config as agent_config_module

    env = {"RUSTCI_COORDINATOR_URLS": "http://a.example:8080, https://b.example:8443/"}
    loaded = agent_config_module.load_settings(AgentConfig, None, agent_config_module.ENV_OVERRIDES, env)
    assert loaded.coordinator.all_urls == ["http://a.example:8080", "https://b.example:8443/"]
    assert AgentConfig().coordinator.all_urls == ["http://127.0.0.1:8080"]  # coordinator.url alone still works


async def test_sigkill_of_the_agents_coordinator_with_jobs_in_flight_moves_it_and_loses_nothing(
    coordinator_process: Callable[..., DaemonProcess], agent_process: StartAgentProcess
) -> None:
    # The same database answers on a second port after the first coordinator's SIGKILL, as the fleet's other
    # coordinator would.
    first, second = free_port(), free_port()
    urls = [f"http://127.0.0.1:{first}", f"http://127.0.0.1:{second}"]
    coordinator = coordinator_process(first, RUSTCI_RATE_LIMITS_ENABLED="false")
    api = Api(f"{urls[0]}/api", API_KEY)
    try:
        await wait_http_ok(f"{urls[0]}/api/health")
        agent = agent_process(urls[0], RUSTCI_COORDINATOR_URLS=",".join(urls), RUSTCI_MAX_CONCURRENT_JOBS="4")
        runner_id = await wait_process_runner(api, agent, timeout=30)
        expected: dict[str, list[str]] = {}
        for n in range(40):
            job_id = await submit_job(api, runner_id, f"inflight-{n}", f"echo first-{n}; sleep 0.05; echo last-{n}")
            expected[job_id] = [f"first-{n}", f"last-{n}"]

        async def some_done() -> bool:
            status, body = await api.get(f"/runners/{runner_id}/jobs?status=completed&limit=1")
            return status == 200 and body["total_count"] >= 5

        await wait_for(some_done, 60, interval=0.05, what="the first jobs to finish")
        coordinator.proc.kill()  # type: ignore[union-attr]
        assert await coordinator.wait_exit(10) == -signal.SIGKILL
        coordinator_process(second, RUSTCI_RATE_LIMITS_ENABLED="false")  # same state directory, the second URL
        api.base_url = f"{urls[1]}/api"
        await wait_http_ok(f"{urls[1]}/api/health")
        await _all_completed_once(api, runner_id, expected, timeout=120)
        assert agent.alive()
        status, body = await api.get(f"/runners/{runner_id}")
        assert status == 200 and body["status"] == "active", body  # the same runner, on the second URL
    finally:
        await api.close()
