"""The executor the job-semantics suite runs on.

Every test in this package takes the ``executor`` fixture and talks to the system through the public API only
(an in-process coordinator and one agent of the executor's type), so the same tests hold every backend to the
same job semantics. Today the suite runs on ``native``. Adding a backend is one entry in ``EXECUTORS`` with
the agent settings that select it; the tests run on it unchanged::

    EXECUTORS = {
        "native": {},
        "docker": {
            "runner": {"type": "docker", "capabilities": ["shell", "docker"]},
            "image": "busybox:1.36",  # the executor's job image setting
            # jobs write counter files to the shared directory: mount it at the same path
            "docker_config": {"volumes": ["{shared}:{shared}:rw"]},
        },
        "kubernetes": {
            "runner": {"type": "kubernetes", "capabilities": ["shell", "kubernetes"]},
            "image": "busybox:1.36",
            "namespace": "rustci-semantics",
        },
    }

``{shared}`` in any string setting is replaced by :attr:`RunnerUnderTest.shared`, a host directory the jobs
and the test both see. Steps use only POSIX ``sh`` and busybox-compatible tools. Leftover processes are found
on this host with psutil (:class:`tests.helpers.ProcessMarker`), which also sees a local Docker's containers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import Agent
from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, Api, submit_job

EXECUTORS: dict[str, dict[str, Any]] = {
    "native": {},
}


def _substitute(value: Any, shared: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{shared}", str(shared))
    if isinstance(value, dict):
        return {k: _substitute(v, shared) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, shared) for v in value]
    return value


@dataclass
class RunnerUnderTest:
    """One registered runner of the executor under test, and the API to drive it."""

    executor: str
    api: Api
    runner_id: str
    agent: Agent
    shared: Path

    @property
    def workspaces(self) -> Path:
        """The agent's directory of job workspaces (``<workspaces>/<job_id>/...``)."""
        return self.agent.config.workspaces

    async def submit(self, name: str, *runs: str, **fields: Any) -> str:
        return await submit_job(self.api, self.runner_id, name, *runs, **fields)

    async def wait(self, job_id: str, statuses: set[str] = TERMINAL, timeout: float = 20.0) -> dict[str, Any]:
        return await self.api.wait_job(self.runner_id, job_id, statuses, timeout)

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

    async def start(self, state_name: str = "semantics", **overrides: Any) -> RunnerUnderTest:
        """Start an agent of this executor (``overrides`` are agent settings, e.g. ``max_concurrent_jobs=2``)."""
        settings = _substitute(self.settings, self.shared)
        agent = await self.start_agent(state_name=state_name, **settings, **overrides)
        return RunnerUnderTest(self.name, self.coordinator.api, agent.identity().runner_id, agent, self.shared)


@pytest.fixture(params=list(EXECUTORS))
def executor(
    request: pytest.FixtureRequest, coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> ExecutorUnderTest:
    shared = tmp_path / "shared"
    shared.mkdir()
    return ExecutorUnderTest(request.param, EXECUTORS[request.param], coordinator, start_agent, shared)
