"""What only the Docker executor has: its container per attempt (labels, limits, removal), ending a step's
processes inside it, streaming, recovery after a crash, and an engine that is not there.

The job semantics every executor shares are in ``tests/semantics`` (run there on docker too). Jobs here run in
``rustci-busybox:test`` with no network; every container a test's runners made is removed at teardown.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.executors.base import ExecutorError
from agent.executors.docker import DockerExecutor, memory_bytes, nano_cpus
from tests import docker_support
from tests.conftest import CoordinatorHandle, StartAgent, StartAgentProcess
from tests.helpers import (
    TERMINAL,
    Api,
    DaemonProcess,
    ProcessMarker,
    agent_config_file,
    free_port,
    job_output,
    submit_job,
    wait_for,
    wait_process_runner,
)

JOB, RUNNER = "rustci.job_id", "rustci.runner_id"


def docker_settings(shared: Path, **overrides: Any) -> dict[str, Any]:
    """Agent settings for a docker runner on the test image; ``shared`` is mounted at the same path."""
    settings: dict[str, Any] = {
        "runner": {"type": "docker", "capabilities": ["shell"]},
        "docker": {"image": docker_support.IMAGE, "pull_policy": "never"},
        "docker_config": {"network_mode": "none", "volumes": [f"{shared}:{shared}:rw"]},
        "kill_grace_period": 1,
    }
    settings.update(overrides)
    return settings


@dataclass
class DockerRunners:
    """Starts in-process docker agents; at teardown stops them and removes every container of theirs."""

    api: Api
    start_agent: StartAgent
    shared: Path
    agents: list[Agent] = field(default_factory=list)
    runner_ids: list[str] = field(default_factory=list)

    async def start(self, **overrides: Any) -> tuple[Agent, str]:
        agent = await self.start_agent(**docker_settings(self.shared, **overrides))
        self.agents.append(agent)
        self.runner_ids.append(agent.identity().runner_id)
        return agent, agent.identity().runner_id

    async def close(self) -> None:
        for agent in self.agents:  # agents first, so that none starts another container
            if not agent.stopped.is_set():
                await agent.stop(timeout=2)
        for runner_id in self.runner_ids:
            await asyncio.to_thread(docker_support.remove_containers, **{RUNNER: runner_id})


@pytest.fixture
async def docker_runners(
    coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> AsyncIterator[DockerRunners]:
    docker_support.require_docker()
    await asyncio.to_thread(docker_support.busybox_image)
    shared = tmp_path / "shared"
    shared.mkdir()
    runners = DockerRunners(coordinator.api, start_agent, shared)
    try:
        yield runners
    finally:
        await runners.close()


async def containers_of(job_id: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(docker_support.containers, **{JOB: job_id})


async def the_container(job_id: str) -> dict[str, Any]:
    """The job's one container, once it exists."""

    async def probe() -> dict[str, Any] | None:
        found = await containers_of(job_id)
        assert len(found) <= 1, found
        return found[0] if found else None

    found = await wait_for(probe, 10, what=f"the container of job {job_id}")
    assert found is not None
    return found


def _inspect(container_id: str) -> dict[str, Any]:
    with docker_support.client() as c:
        details: dict[str, Any] = c.api.inspect_container(container_id)
    return details


def _processes(container_id: str) -> str:
    """``ps`` inside the container: every process in it, as the container sees them."""
    with docker_support.client() as c:
        exec_id = c.api.exec_create(container_id, ["ps", "-o", "pid,args"])["Id"]
        return str(c.api.exec_start(exec_id).decode())


def test_resource_quantities_become_docker_units() -> None:
    assert nano_cpus("2000m") == nano_cpus("2") == 2_000_000_000
    assert nano_cpus("0.5") == nano_cpus("500m") == 500_000_000
    assert memory_bytes("4Gi") == 4 * 1024**3
    assert memory_bytes("64Mi") == 64 * 1024**2
    assert memory_bytes("1G") == 1_000_000_000
    assert memory_bytes("100k") == memory_bytes("100K") == 100_000


# --- the container ----------------------------------------------------------------------------------------------


async def test_a_job_runs_in_a_labelled_limited_container_that_is_removed_after_it(
    docker_runners: DockerRunners,
) -> None:
    agent, runner_id = await docker_runners.start(resource_limits={"cpu_limit": "500m", "memory_limit": "64Mi"})
    release = docker_runners.shared / "release"
    job_id = await submit_job(
        docker_runners.api,
        runner_id,
        "contained",
        'test -f /.dockerenv && test "$PWD" = /workspace && touch made-here',
        # The image's HOME, not the agent's; the job's own PATH, not the agent's.
        'test "$HOME" = /root || exit 11; test "$PATH" = /bin:/job/bin || exit 12',
        f'while [ ! -e "{release}" ]; do sleep 0.05; done',
        environment={"PATH": "/bin:/job/bin"},
    )
    container = await the_container(job_id)
    assert container["Labels"][JOB] == job_id
    assert container["Labels"]["rustci.attempt"] == "1"
    assert container["Labels"][RUNNER] == runner_id
    assert container["Names"] == [f"/rustci-{job_id}-1"]
    host = (await asyncio.to_thread(_inspect, container["Id"]))["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 * 1024**2
    assert host["NetworkMode"] == "none"
    assert host["Privileged"] is False
    workspace = agent.config.workspaces.resolve() / job_id / "1"
    assert f"{workspace}:/workspace:rw" in host["Binds"], host["Binds"]
    assert f"{docker_runners.shared}:{docker_runners.shared}:rw" in host["Binds"], host["Binds"]

    async def first_steps_done() -> bool:
        job = await docker_runners.api.job(runner_id, job_id)
        return [s["status"] for s in job["steps"]] == ["completed", "completed", "running"]

    await wait_for(first_steps_done, 10, what="the first two steps to complete")
    assert (workspace / "made-here").exists(), "the container's /workspace is not the job's workspace"
    release.touch()
    job = await docker_runners.api.wait_job(runner_id, job_id, TERMINAL)
    assert job["status"] == "completed", job
    assert await containers_of(job_id) == []
    assert not workspace.exists()


async def test_output_reaches_the_logs_api_line_by_line_while_the_step_runs(docker_runners: DockerRunners) -> None:
    _, runner_id = await docker_runners.start()
    api, release = docker_runners.api, docker_runners.shared / "release"
    step = f'echo first; echo to-stderr >&2; while [ ! -e "{release}" ]; do sleep 0.05; done; echo second'
    job_id = await submit_job(api, runner_id, "streaming", step)

    async def first_lines() -> list[str] | None:
        lines = await job_output(api, runner_id, job_id)
        return lines if {"first", "to-stderr"} <= set(lines) else None

    lines = await wait_for(first_lines, 10, what="the step's first lines in the logs API")
    assert lines is not None and "second" not in lines
    assert (await api.job(runner_id, job_id))["status"] == "running"
    release.touch()
    job = await api.wait_job(runner_id, job_id, TERMINAL)
    assert job["status"] == "completed", job
    lines = await job_output(api, runner_id, job_id)
    assert lines.index("first") < lines.index("second"), lines


# --- ending a step ----------------------------------------------------------------------------------------------


async def test_cancel_terms_then_kills_every_process_of_the_step_inside_its_container(
    docker_runners: DockerRunners, process_marker: Callable[[], ProcessMarker]
) -> None:
    # "never": the container stays after the job, so what is left inside it can be looked at.
    _, runner_id = await docker_runners.start(cleanup_policy="never", kill_grace_period=1)
    api, marker = docker_runners.api, process_marker()
    step = (
        "trap 'echo got-term' TERM; "
        f"{marker.sleep(1)} & "  # ends on SIGTERM
        f"setsid {marker.sleep(2)} & "  # left the step's session
        f"nohup sh -c \"trap '' TERM; {marker.sleep(3)}\" >/dev/null 2>&1 & "  # ignores SIGTERM
        f"sh -c \"trap '' TERM; {marker.sleep(4)}\" & "  # ignores SIGTERM, holds the step's output open
        "wait"
    )
    job_id = await submit_job(api, runner_id, "cancelled", step)

    async def all_sleeping() -> bool:
        commands = [line.split(": ", 1)[1] for line in marker.describe()]
        return all(marker.sleep(i) in commands for i in range(1, 5))

    await wait_for(all_sleeping, 10, what="the step's four sleeps")

    cancelled_at = time.monotonic()
    status, body = await api.post(f"/runners/{runner_id}/jobs/{job_id}/cancel")
    assert status == 200, body
    job = await api.wait_job(runner_id, job_id, TERMINAL)
    took = time.monotonic() - cancelled_at
    assert job["status"] == "cancelled", job
    assert job["steps"][0]["status"] == "cancelled", job
    assert 1.0 <= took < 5.0, f"SIGKILL should follow the 1s grace period; the cancel took {took:.1f}s"
    assert "got-term" in await job_output(api, runner_id, job_id)
    await marker.assert_gone()
    container = await the_container(job_id)
    inside = await asyncio.to_thread(_processes, container["Id"])
    assert marker.token not in inside, inside
    assert container["State"] == "running"  # only the step's processes ended, not the container


async def test_a_finished_step_leaves_no_process_behind_in_its_container(
    docker_runners: DockerRunners, process_marker: Callable[[], ProcessMarker]
) -> None:
    _, runner_id = await docker_runners.start(cleanup_policy="never")  # the container stays: look inside
    api, marker = docker_runners.api, process_marker()
    job_id = await submit_job(
        api, runner_id, "leaves-work", f"{marker.sleep(1)} & setsid {marker.sleep(2)} & echo started", "true"
    )
    job = await api.wait_job(runner_id, job_id, TERMINAL)
    assert job["status"] == "completed", job
    await marker.assert_gone()
    inside = await asyncio.to_thread(_processes, (await the_container(job_id))["Id"])
    assert marker.token not in inside, inside


async def test_after_a_crash_the_new_agent_removes_the_jobs_container(
    coordinator: CoordinatorHandle,
    agent_process: StartAgentProcess,
    tmp_path: Path,
    process_marker: Callable[[], ProcessMarker],
) -> None:
    docker_support.require_docker()
    await asyncio.to_thread(docker_support.busybox_image)
    shared = tmp_path / "shared"
    shared.mkdir()
    config = agent_config_file(tmp_path / "agent.yaml", shutdown_timeout=3, **docker_settings(shared))
    launch = functools.partial(
        agent_process, coordinator.url, state_name="crashing", port=free_port(), RUSTCI_CONFIG=str(config)
    )
    api, marker = coordinator.api, process_marker()
    proc = launch()
    runner_id = await wait_process_runner(api, proc)
    try:
        await _crash_and_recover(api, proc, launch, runner_id, marker)
    finally:
        await asyncio.to_thread(docker_support.remove_containers, **{RUNNER: runner_id})


async def _crash_and_recover(
    api: Api, proc: DaemonProcess, launch: Callable[[], DaemonProcess], runner_id: str, marker: ProcessMarker
) -> None:
    job_id = await submit_job(api, runner_id, "interrupted", marker.sleep(1))
    await marker.wait_running(1)
    container = await the_container(job_id)

    proc.kill()  # SIGKILL: no cancel, no cleanup
    assert [c["Id"] for c in await containers_of(job_id)] == [container["Id"]]
    again = launch()
    assert await wait_process_runner(api, again) == runner_id

    job = await api.wait_job(runner_id, job_id, TERMINAL, timeout=10)
    assert job["status"] == "failed" and job["reason"] == "agent restarted", job
    assert await containers_of(job_id) == []
    await marker.assert_gone()
    assert await again.stop() == 0


# --- when Docker is not there -----------------------------------------------------------------------------------


@pytest.fixture
def dead_docker_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``DOCKER_HOST`` pointing at a unix socket nobody listens on any more."""
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
    host = f"unix://{path}"
    monkeypatch.setenv("DOCKER_HOST", host)
    return host


async def test_an_unreachable_engine_fails_the_check_with_a_clear_reason(dead_docker_host: str, tmp_path: Path) -> None:
    executor = DockerExecutor(AgentConfig.model_validate(docker_settings(tmp_path)))
    async with asyncio.timeout(10):
        with pytest.raises(ExecutorError, match=f"Docker engine not reachable at {dead_docker_host}"):
            await executor.check()


async def test_while_the_engine_is_unreachable_the_runner_is_in_error_and_holds_jobs_until_it_is_back(
    coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker_support.require_docker()
    await asyncio.to_thread(docker_support.busybox_image)
    engine = os.environ.get("DOCKER_HOST")
    dead = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(dead))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dead}")
    api = coordinator.api
    agent = await start_agent(**docker_settings(tmp_path))
    runner_id = agent.identity().runner_id
    try:
        await api.wait_runner_status(runner_id, "error", timeout=10)
        job_id = await submit_job(api, runner_id, "waits-for-the-engine", "echo ran")
        # Held on the coordinator, not failed: the agent takes nothing while its executor cannot run it.
        assert (await api.job(runner_id, job_id))["status"] == "queued"
        assert agent.supervisor.queued_jobs == agent.supervisor.active_jobs == 0

        if engine is None:  # the engine comes back
            monkeypatch.delenv("DOCKER_HOST")
        else:
            monkeypatch.setenv("DOCKER_HOST", engine)
        await api.wait_runner_status(runner_id, "active", timeout=10)
        job = await api.wait_job(runner_id, job_id, TERMINAL, timeout=30)
        assert job["status"] == "completed", job
    finally:
        await agent.stop(timeout=2)
        await asyncio.to_thread(docker_support.remove_containers, **{RUNNER: runner_id})


async def test_a_missing_image_with_pull_policy_never_fails_the_job_naming_it(docker_runners: DockerRunners) -> None:
    _, runner_id = await docker_runners.start(docker={"image": "rustci-absent:none", "pull_policy": "never"})
    job_id = await submit_job(docker_runners.api, runner_id, "no-image", "true")
    job = await docker_runners.api.wait_job(runner_id, job_id, TERMINAL)
    assert job["status"] == "failed", job
    assert "image rustci-absent:none is not on this Docker host" in job["reason"], job
    assert await containers_of(job_id) == []


async def test_a_job_runs_in_its_own_image_over_the_runners_default(docker_runners: DockerRunners) -> None:
    # The runner's default image is absent: the job can only succeed in the image it names.
    agent, runner_id = await docker_runners.start(docker={"image": "rustci-absent:none", "pull_policy": "never"})
    api = docker_runners.api
    status, body = await api.post(
        f"/runners/{runner_id}/jobs",
        {"name": "own-image", "image": docker_support.IMAGE, "steps": [{"name": "s", "run": "true"}]},
    )
    assert status == 201, body
    job = await api.wait_job(runner_id, body["job_id"], TERMINAL)
    assert job["status"] == "completed", job
    # A docker runner advertises the capability its executor gives it.
    _, runner = await api.get(f"/runners/{runner_id}")
    assert "docker" in runner["capabilities"]
    assert agent.config.runner.type == "docker"
