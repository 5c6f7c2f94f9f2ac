"""The executor seam: a backend is one module registered by name, built from the agent's settings, and asked
for its checks, capabilities and live settings changes; what every executor does at a step's start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import ValidationError

from agent import executors
from agent.config import AgentConfig
from agent.executors.base import ExecutorDefaults, ExecutorError, JobContext, OutputSink, StepContext
from agent.executors.local import LocalExecutor
from agent.executors.native import NativeExecutor
from shared.models import CapabilityState, HealthCheck, StepSpec
from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import job_output, submit_job


class EchoExecutor(ExecutorDefaults):
    """A whole backend in one class: a step 'runs' by echoing its script's words; ``exit N`` is its exit code."""

    name: ClassVar[str] = "echo"
    runner_type: ClassVar = "native"
    configured: ClassVar[list[set[str]]] = []
    started: ClassVar[int] = 0

    def configure(self, changed: set[str]) -> None:
        super().configure(changed)
        EchoExecutor.configured.append(changed)

    async def start(self, runner_id: str, open_jobs: set[str]) -> None:
        EchoExecutor.started += 1

    async def health(self) -> dict[str, HealthCheck]:
        return {"echo_engine": HealthCheck(status="pass", version="1.0")}

    async def capabilities(self) -> dict[str, CapabilityState]:
        return {"echo": "available"}

    async def metadata(self) -> dict[str, str]:
        return {"echo_version": "1.0"}

    async def setup(self, job: JobContext) -> None:
        return None

    async def run_step(self, job: JobContext, step: StepContext, output: OutputSink) -> int:
        words = step.spec.run.split()
        if words[:1] == ["exit"]:
            return int(words[1])
        output("stdout", " ".join(words))
        await output.drain()
        return 0

    async def cleanup(self, job: JobContext) -> None:
        return None

    async def recover(self, job_id: str) -> int:
        return 0


@pytest.fixture
def echo_backend() -> Iterator[type[EchoExecutor]]:
    executors.register(EchoExecutor)
    EchoExecutor.configured.clear()
    EchoExecutor.started = 0
    try:
        yield EchoExecutor
    finally:
        executors.unregister(EchoExecutor.name)


async def test_a_backend_registered_by_name_runs_jobs_and_answers_health_and_capabilities(
    echo_backend: type[EchoExecutor], coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(runner={"type": "echo", "capabilities": ["shell"]})
    assert isinstance(agent.executor, EchoExecutor)
    assert echo_backend.started == 1
    runner_id = agent.identity().runner_id
    api = coordinator.api
    status, runner = await api.get(f"/runners/{runner_id}")
    assert status == 200, runner
    assert "echo" in runner["capabilities"] and runner["metadata"]["echo_version"] == "1.0", runner
    assert runner["metadata"]["executor"] == "echo"
    job_id = await submit_job(api, runner_id, "echoed", "hello   seam", "exit 3")
    job = await api.wait_job(runner_id, job_id, {"completed", "failed"})
    assert job["status"] == "failed" and job["exit_code"] == 3, job
    assert await job_output(api, runner_id, job_id) == ["hello seam"]
    status, health = await api.get(f"/runners/{runner_id}/health")
    assert status == 200 and health["checks"]["echo_engine"] == {"status": "pass", "version": "1.0"}, health
    status, view = await api.get(f"/runners/{runner_id}/status")
    assert status == 200 and view["capabilities_status"] == {"shell": "available", "echo": "available"}, view
    # A live settings change reaches the executor.
    status, body = await api.put(f"/runners/{runner_id}/config", {"kill_grace_period": 3})
    assert status == 200, body
    assert any("kill_grace_period" in changed for changed in echo_backend.configured)
    assert agent.executor.kill_grace_period == 3


def test_an_unknown_executor_is_refused_at_load_naming_the_known_ones() -> None:
    with pytest.raises(ValidationError, match=r"unknown executor 'podman'.*docker.*kubernetes.*local.*native"):
        AgentConfig.model_validate({"runner": {"type": "podman"}})


def test_each_type_builds_its_own_backend(tmp_path: Path) -> None:
    for name, cls in (("local", LocalExecutor), ("native", NativeExecutor)):
        config = AgentConfig.model_validate({"runner": {"type": name}, "state_dir": str(tmp_path)})
        executor = executors.create(config)
        assert type(executor) is cls
        assert executor.name == name and executor.runner_type == name


# --- starting a step -------------------------------------------------------------------------------------------


def _job(tmp_path: Path) -> JobContext:
    return JobContext(job_id="j1", runner_id="r1", name="j", attempt=1, workspace=tmp_path / "ws")


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append(line)

    async def drain(self) -> None:
        return None

    async def flush(self) -> None:
        return None


@pytest.mark.parametrize("kind", ["local", "native"])
async def test_a_step_that_cannot_start_is_an_executor_error_with_a_reason(tmp_path: Path, kind: str) -> None:
    config = AgentConfig.model_validate({"runner": {"type": kind}, "state_dir": str(tmp_path)})
    executor = executors.create(config)
    job = _job(tmp_path)
    await executor.setup(job)
    try:
        step = StepContext(0, StepSpec(name="nul", run="true"), {"PATH": "/usr/bin:/bin", "BAD": "a\0b"})
        with pytest.raises(ExecutorError, match="cannot start step 'nul'"):
            await executor.run_step(job, step, Lines())
    finally:
        await executor.cleanup(job)


@pytest.mark.parametrize("kind", ["local", "native"])
async def test_a_script_far_over_the_argument_limit_runs(tmp_path: Path, kind: str) -> None:
    config = AgentConfig.model_validate({"runner": {"type": kind}, "state_dir": str(tmp_path)})
    executor = executors.create(config)
    job = _job(tmp_path)
    # ~1,000,000 characters: far over one argument's 128 KiB (what "sh -c <script>" would be refused with).
    script = ": " + "x" * 999_000 + "\necho done\n"
    await executor.setup(job)
    try:
        out = Lines()
        code = await executor.run_step(job, StepContext(0, StepSpec(name="big", run=script), {"PATH": "/bin"}), out)
        assert code == 0 and out.lines == ["done"], out.lines[:3]
    finally:
        await executor.cleanup(job)
