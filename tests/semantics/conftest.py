"""The executor the job-semantics suite runs on.

Every test in this package takes the ``executor`` fixture and talks to the system through the public API only
(an in-process coordinator and one agent of the executor's type), so the same tests hold every backend to the
same job semantics. The suite runs on ``native``, ``local``, ``docker`` (skipped without a Docker engine unless
``RUSTCI_REQUIRE_DOCKER=1``) and ``kubernetes`` (on the emulated cluster of ``tests/kubernetes/cluster.py``,
whose kubelet runs pods as local processes; the workspace and the shared directory are hostPath volumes).
Adding a backend is one entry in ``EXECUTORS`` with the agent settings that select it; the tests run on it
unchanged. ``{shared}`` in any string setting is replaced by :attr:`RunnerUnderTest.shared`, a host directory
the jobs and the test both see (the Docker and Kubernetes entries mount it at the same path), ``{kubeconfig}``
by the emulated cluster's kubeconfig file.

Steps use only POSIX ``sh`` and busybox-compatible tools. Leftover processes are found on this host with psutil
(:class:`tests.helpers.ProcessMarker`), which also sees the processes in a local Docker's containers. On Docker,
every job that ended under ``cleanup_policy: always`` is also checked to have left no container behind, and the
containers of the suite's runners are removed at teardown whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import Agent
from tests import docker_support
from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, Api, submit_job
from tests.kubernetes.cluster import EmulatedCluster


async def _stop_agents(agents: Callable[[], list[Agent]]) -> None:
    for agent in agents():
        if not agent.stopped.is_set():
            await agent.stop(timeout=2)


EXECUTORS: dict[str, dict[str, Any]] = {
    "native": {},
    "local": {"runner": {"type": "local"}},
    "docker": {
        "runner": {"type": "docker", "capabilities": ["shell", "docker"]},
        "docker": {"image": docker_support.IMAGE, "pull_policy": "never"},
        # No network for the jobs; they write counter files to the shared directory: mount it at the same path.
        "docker_config": {"network_mode": "none", "volumes": ["{shared}:{shared}:rw"]},
    },
    "kubernetes": {
        "runner": {"type": "kubernetes", "capabilities": ["shell"]},
        "kubernetes": {
            "kubeconfig": "{kubeconfig}",
            "image": "busybox:emulated",
            "host_workspace": True,
            "volumes": ["{shared}:{shared}"],
        },
    },
}


def _substitute(value: Any, shared: Path, kubeconfig: Path | None = None) -> Any:
    if isinstance(value, str):
        return value.replace("{shared}", str(shared)).replace("{kubeconfig}", str(kubeconfig))
    if isinstance(value, dict):
        return {k: _substitute(v, shared, kubeconfig) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, shared, kubeconfig) for v in value]
    return value


@dataclass
class RunnerUnderTest:
    """One registered runner of the executor under test, and the API to drive it."""

    executor: str
    api: Api
    runner_id: str
    agent: Agent
    shared: Path
    cluster: EmulatedCluster | None = None

    @property
    def workspaces(self) -> Path:
        """The agent's directory of job workspaces (``<workspaces>/<job_id>/...``)."""
        return self.agent.config.workspaces

    async def submit(self, name: str, *runs: str, **fields: Any) -> str:
        return await submit_job(self.api, self.runner_id, name, *runs, **fields)

    async def wait(self, job_id: str, statuses: set[str] = TERMINAL, timeout: float = 20.0) -> dict[str, Any]:
        job = await self.api.wait_job(self.runner_id, job_id, statuses, timeout)
        if self.executor == "docker" and job["status"] in TERMINAL and self.agent.config.cleanup_policy == "always":
            # The job's report follows its cleanup: by now its container is gone.
            left = await asyncio.to_thread(docker_support.containers, **{"rustci.job_id": job_id})
            assert not left, f"containers of job {job_id} left behind: {[c['Names'] for c in left]}"
        if self.cluster is not None and job["status"] in TERMINAL and self.agent.config.cleanup_policy == "always":
            left_pods = [p for p in self.cluster.pods() if p["metadata"]["labels"].get("rustci.job_id") == job_id]
            assert not left_pods, f"pods of job {job_id} left behind"
        return job

    async def run(self, name: str, *runs: str, **fields: Any) -> dict[str, Any]:
        """Submit and wait until the job ends; returns its detail."""
        return await self.wait(await self.submit(name, *runs, **fields))

    async def configure(self, **settings: Any) -> None:
        status, body = await self.api.put(f"/runners/{self.runner_id}/config", settings)
        assert status == 200, body
        assert body["restart_required"] is False, body


@dataclass
class ExecutorUnderTest:
    name: str
    settings: dict[str, Any]
    coordinator: CoordinatorHandle
    start_agent: StartAgent
    shared: Path
    cluster: EmulatedCluster | None = None

    agents: list[Agent] = field(default_factory=list)

    async def start(self, state_name: str = "semantics", **overrides: Any) -> RunnerUnderTest:
        """Start an agent of this executor (``overrides`` are agent settings, e.g. ``max_concurrent_jobs=2``)."""
        kubeconfig = self.cluster.kubeconfig if self.cluster is not None else None
        settings = _substitute(self.settings, self.shared, kubeconfig)
        agent = await self.start_agent(state_name=state_name, **settings, **overrides)
        self.agents.append(agent)
        runner_id = agent.identity().runner_id
        return RunnerUnderTest(self.name, self.coordinator.api, runner_id, agent, self.shared, self.cluster)


@pytest.fixture(params=list(EXECUTORS))
async def executor(
    request: pytest.FixtureRequest, coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> AsyncIterator[ExecutorUnderTest]:
    if request.param == "docker":
        docker_support.require_docker()
        await asyncio.to_thread(docker_support.busybox_image)
    shared = tmp_path / "shared"
    shared.mkdir()
    async with contextlib.AsyncExitStack() as stack:
        cluster = None
        if request.param == "kubernetes":
            (tmp_path / "cluster").mkdir()
            cluster = await stack.enter_async_context(EmulatedCluster(tmp_path / "cluster"))
            # Agents first (they may still delete pods), then the cluster.
            stack.push_async_callback(_stop_agents, lambda: under_test.agents)
        under_test = ExecutorUnderTest(
            request.param, EXECUTORS[request.param], coordinator, start_agent, shared, cluster
        )
        yield under_test
    if request.param == "docker":
        # Whatever the test's agents left (a failed test, cleanup_policy never): agents first, so none starts more.
        for agent in under_test.agents:
            if not agent.stopped.is_set():
                await agent.stop(timeout=2)
            if (identity := agent.identity_or_none) is not None:
                await asyncio.to_thread(docker_support.remove_containers, **{"rustci.runner_id": identity.runner_id})
