"""``GET /runners/{id}/status`` and ``/health``: live from the agent, or from the last heartbeat when it is gone."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent import sysinfo
from tests import docker_support
from tests.conftest import CoordinatorHandle, StartAgent, coordinator_config, running_coordinator
from tests.helpers import ISO_UTC_PATTERN, SilentChannel, assert_error, free_port, register_runner, wait_for

LOAD_KEYS = {"active_jobs", "queued_jobs", "cpu_usage", "memory_usage", "disk_usage"}


async def _status(coordinator: CoordinatorHandle, runner_id: str) -> dict[str, Any]:
    code, body = await coordinator.api.get(f"/runners/{runner_id}/status")
    assert code == 200, body
    assert set(body) == {"runner_id", "status", "health", "last_heartbeat", "current_load", "capabilities_status"}
    assert set(body["current_load"]) == LOAD_KEYS
    return dict(body)


async def _health(coordinator: CoordinatorHandle, runner_id: str) -> dict[str, Any]:
    code, body = await coordinator.api.get(f"/runners/{runner_id}/health")
    assert code == 200, body
    assert set(body) == {"runner_id", "health", "checks", "last_check"}
    assert re.match(ISO_UTC_PATTERN, body["last_check"]), body
    return dict(body)


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point the Docker SDK at a socket nobody listens on: the daemon is 'down' for this test."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")


def _docker_running() -> bool:
    return docker_support.docker_problem() is None


def _docker_version() -> str:
    with docker_support.client() as c:
        return str(c.version()["Version"])


# --- status --------------------------------------------------------------------------------------------------


async def test_status_of_a_live_agent_is_its_own_answer(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(runner={"capabilities": ["shell", "isolation"]}, max_concurrent_jobs=1)
    runner_id = agent.identity().runner_id
    # One job running and one waiting behind it, so the load shows both counts.
    for name in ("first", "second"):
        code, body = await coordinator.api.post(
            f"/runners/{runner_id}/jobs", {"name": name, "steps": [{"name": "wait", "run": "sleep 30"}]}
        )
        assert code == 201, body
    await wait_for(lambda: _counts(agent), what="one running and one queued job")

    async def settled() -> dict[str, Any] | None:
        # A job being handed over is the agent's and still held for a moment (until its delivery is recorded).
        body = await _status(coordinator, runner_id)
        load = body["current_load"]
        return body if (load["active_jobs"], load["queued_jobs"]) == (1, 1) else None

    body = await wait_for(settled, 10, what="the handed-over job to be counted once")
    assert body["runner_id"] == runner_id
    assert body["status"] == "active"
    assert body["health"] == "healthy"
    assert re.match(ISO_UTC_PATTERN, body["last_heartbeat"]), body
    load = body["current_load"]
    assert (load["active_jobs"], load["queued_jobs"]) == (1, 1)
    for key in ("cpu_usage", "memory_usage", "disk_usage"):
        assert 0 <= load[key] <= 100
    assert body["capabilities_status"] == {"shell": "available", "isolation": "available"}


async def _counts(agent: Any) -> bool:
    return bool(agent.supervisor.active_jobs == 1 and agent.supervisor.queued_jobs == 1)


async def test_a_stopped_agent_reads_inactive_and_unhealthy_from_its_last_heartbeat(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(runner={"capabilities": ["shell"]})
    runner_id = agent.identity().runner_id
    await wait_for(lambda: _heartbeat_seen(coordinator, runner_id), what="a heartbeat")
    await agent.stop(timeout=2)
    record = await coordinator.store.get_runner(runner_id)

    body = await _status(coordinator, runner_id)
    assert body["status"] == "inactive"
    assert body["health"] == "unhealthy"
    assert body["capabilities_status"] == {"shell": "unavailable"}
    # What the coordinator last heard, not zeros.
    assert body["current_load"] == record.load.model_dump()
    assert body["last_heartbeat"] is not None
    assert abs(_epoch(body["last_heartbeat"]) - record.last_heartbeat) < 0.002


async def _heartbeat_seen(coordinator: CoordinatorHandle, runner_id: str) -> bool:
    record = await coordinator.store.get_runner(runner_id)
    return record is not None and record.last_heartbeat is not None


def _epoch(text: str) -> float:
    from shared.timeutil import parse_iso

    return parse_iso(text).timestamp()


async def test_a_runner_never_heard_from_has_no_last_heartbeat(coordinator: CoordinatorHandle) -> None:
    runner_id = (await register_runner(coordinator.api, host="127.0.0.1", port=free_port()))["runner_id"]
    body = await _status(coordinator, runner_id)
    assert body["status"] == "inactive"
    assert body["health"] == "unhealthy"
    assert body["last_heartbeat"] is None
    assert body["capabilities_status"] == {
        "docker": "unavailable",
        "isolation": "unavailable",
        "deployment": "unavailable",
    }


@pytest.fixture
async def impatient_coordinator(tmp_path: Path) -> AsyncIterator[CoordinatorHandle]:
    async with running_coordinator(
        coordinator_config(tmp_path / "impatient", agents={"status_timeout": 0.3})
    ) as handle:
        yield handle


async def test_an_agent_that_hangs_costs_the_status_timeout_not_more(
    impatient_coordinator: CoordinatorHandle,
) -> None:
    coordinator = impatient_coordinator
    runner = await register_runner(coordinator.api)
    runner_id = runner["runner_id"]
    async with SilentChannel(coordinator.url, runner_id, runner["registration_token"]):  # connected, never answers
        for path in ("status", "health"):
            started = time.monotonic()
            code, body = await coordinator.api.get(f"/runners/{runner_id}/{path}")
            took = time.monotonic() - started
            assert code == 200, body
            assert body["health"] == "unhealthy"
            assert 0.3 <= took < 1.5, took
    assert body["checks"]["connectivity"]["status"] == "fail"
    assert body["checks"]["connectivity"]["response_time_ms"] >= 300


async def test_status_and_health_of_an_unknown_runner_are_not_found(coordinator: CoordinatorHandle) -> None:
    for path in ("status", "health", "metrics"):
        code, body = await coordinator.api.get(f"/runners/runner_nope/{path}")
        assert_error(code, body, 404, "RUNNER_NOT_FOUND", runner_id="runner_nope")


async def test_status_needs_credentials(coordinator: CoordinatorHandle) -> None:
    runner_id = (await register_runner(coordinator.api, host="127.0.0.1", port=free_port()))["runner_id"]
    anonymous = coordinator.client(api_key=None)
    for path in ("status", "health", "metrics"):
        code, body = await anonymous.get(f"/runners/{runner_id}/{path}")
        assert_error(code, body, 401, "AUTHENTICATION_REQUIRED")


# --- health --------------------------------------------------------------------------------------------------


async def test_health_of_a_live_agent(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    body = await _health(coordinator, runner_id)
    assert body["runner_id"] == runner_id
    assert body["health"] == "healthy"
    checks = body["checks"]
    # A native runner: no docker_daemon check, but which resource limits it enforces.
    assert set(checks) == {"connectivity", "disk_space", "memory", "resource_limits"}
    assert checks["resource_limits"]["status"] == "pass"
    assert checks["resource_limits"]["enforcement"] in ("cgroup-v2", "cgroup-v1", "setrlimit")
    assert checks["connectivity"]["status"] == "pass"
    assert 0 < checks["connectivity"]["response_time_ms"] < 2000
    disk_gb, memory_gb = sysinfo.free_gb(agent.config.workspaces)
    assert checks["disk_space"] == {"status": "pass", "available_gb": pytest.approx(disk_gb, abs=1.0)}
    assert checks["memory"] == {"status": "pass", "available_gb": pytest.approx(memory_gb, abs=1.0)}


async def test_health_thresholds_come_from_the_agent_config(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    # Any real disk has less than 10^9 GiB free (warn); no host has 10^9 GiB of memory available (fail).
    agent = await start_agent(
        health={"disk_warn_gb": 1e9, "disk_fail_gb": 0, "memory_warn_gb": 1e9, "memory_fail_gb": 1e9}
    )
    body = await _health(coordinator, agent.identity().runner_id)
    assert body["checks"]["disk_space"]["status"] == "warn"
    assert body["checks"]["memory"]["status"] == "fail"
    assert body["health"] == "unhealthy"
    status = await _status(coordinator, agent.identity().runner_id)
    assert status["health"] == "unhealthy"


async def test_a_warning_alone_is_degraded(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent(health={"disk_warn_gb": 1e9, "disk_fail_gb": 0})
    body = await _health(coordinator, agent.identity().runner_id)
    assert body["checks"]["disk_space"]["status"] == "warn"
    assert body["checks"]["memory"]["status"] == "pass"
    assert body["health"] == "degraded"
    assert (await _status(coordinator, agent.identity().runner_id))["health"] == "degraded"


async def test_health_of_an_unreachable_agent_is_unhealthy_not_an_error(coordinator: CoordinatorHandle) -> None:
    runner_id = (await register_runner(coordinator.api, host="127.0.0.1", port=free_port()))["runner_id"]
    body = await _health(coordinator, runner_id)
    assert body["health"] == "unhealthy"
    checks = body["checks"]
    assert checks["connectivity"]["status"] == "fail"
    assert "not connected" in checks["connectivity"]["error"]
    # A Docker runner (as registered): its daemon could not be checked either.
    assert {name: check["status"] for name, check in checks.items()} == {
        "connectivity": "fail",
        "docker_daemon": "unknown",
        "disk_space": "unknown",
        "memory": "unknown",
    }


@pytest.mark.skipif(not _docker_running(), reason="no Docker daemon on this host")
async def test_docker_capability_is_checked_against_the_daemon(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(runner={"type": "docker", "capabilities": ["shell"]})
    runner_id = agent.identity().runner_id
    body = await _health(coordinator, runner_id)
    assert body["checks"]["docker_daemon"] == {"status": "pass", "version": _docker_version()}
    assert body["health"] == "healthy"
    status = await _status(coordinator, runner_id)
    assert status["capabilities_status"] == {"shell": "available", "docker": "available"}


async def test_docker_capability_without_a_daemon_is_unavailable(
    coordinator: CoordinatorHandle, start_agent: StartAgent, no_docker: None
) -> None:
    agent = await start_agent(runner={"type": "docker", "capabilities": ["shell"]})
    runner_id = agent.identity().runner_id
    await coordinator.api.wait_runner_status(runner_id, "error", timeout=10)  # it takes no jobs meanwhile
    status = await _status(coordinator, runner_id)
    assert status["status"] == "error"
    assert status["capabilities_status"] == {"shell": "available", "docker": "unavailable"}
    assert status["health"] == "unhealthy"
    body = await _health(coordinator, runner_id)
    assert body["checks"]["docker_daemon"]["status"] == "fail"
    assert body["checks"]["docker_daemon"]["error"]
    assert body["checks"]["connectivity"]["status"] == "pass"
    assert body["health"] == "unhealthy"
