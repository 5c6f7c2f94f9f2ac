"""The native executor enforces ``resource_limits`` on each job (a cgroup per job here: the test host gives the
agent cgroup v1 hierarchies, or a delegated cgroup v2), and the local executor does not.

Measured, not assumed: a job over its memory limit is killed by the kernel and reported as such; a CPU-bound
job under a 0.2-CPU quota gets at most about a fifth of the wall time as CPU time (the shell's ``times``)."""

from __future__ import annotations

import re

import pytest

from agent.executors import cgroups
from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import job_output, submit_job

pytestmark = pytest.mark.skipif(cgroups.detect() is None, reason="the agent cannot create cgroups on this host")

# Holds ~100 MB in a shell variable.
HOG = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}"
# Busy in the shell itself for about 0.6 s of CPU, then prints the CPU time used by the shell and its children.
SPIN = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; times"


def _cpu_seconds(times_output: list[str]) -> float:
    total = 0.0
    for line in times_output:
        for minutes, seconds in re.findall(r"(\d+)m([\d.]+)s", line):
            total += int(minutes) * 60 + float(seconds)
    return total


async def test_a_job_over_its_memory_limit_is_killed_and_reported_so(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(resource_limits={"memory_limit": "32Mi"})
    runner_id = agent.identity().runner_id
    status, health = await coordinator.api.get(f"/runners/{runner_id}/health")
    assert status == 200
    check = health["checks"]["resource_limits"]
    assert check["enforcement"] == cgroups.detect().kind and check["memory_limit"] == "32Mi", check  # type: ignore[union-attr]
    job_id = await submit_job(coordinator.api, runner_id, "hog", HOG, "echo after")
    job = await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed"}, timeout=30)
    assert job["status"] == "failed", job
    assert "memory limit of 32Mi" in job["reason"], job
    assert job["steps"][0]["status"] == "failed" and job["steps"][0]["exit_code"] != 0, job
    assert job["steps"][1]["status"] == "skipped", job
    assert not any("survived" in line for line in await job_output(coordinator.api, runner_id, job_id))


async def test_the_same_job_under_the_limit_completes(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent(resource_limits={"memory_limit": "512Mi"})
    runner_id = agent.identity().runner_id
    job_id = await submit_job(coordinator.api, runner_id, "fits", HOG)
    job = await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed"}, timeout=30)
    assert job["status"] == "completed", job
    assert await job_output(coordinator.api, runner_id, job_id) == ["survived 100000000"]


async def test_a_cpu_bound_job_is_throttled_to_its_quota(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(resource_limits={"cpu_limit": "200m"})
    runner_id = agent.identity().runner_id
    job_id = await submit_job(coordinator.api, runner_id, "spin", SPIN)
    job = await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed"}, timeout=60)
    assert job["status"] == "completed", job
    cpu = _cpu_seconds(await job_output(coordinator.api, runner_id, job_id))
    wall = job["steps"][0]["duration"]
    assert cpu > 0.2, (cpu, wall)  # it did work
    # 0.2 CPU: CPU time at most ~a fifth of the wall time (some slack for the period's granularity).
    assert cpu / wall < 0.3, f"{cpu:.2f}s CPU in {wall:.2f}s wall: not throttled to 0.2 CPU"


async def test_the_local_executor_enforces_nothing(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent(runner={"type": "local"}, resource_limits={"memory_limit": "32Mi"})
    runner_id = agent.identity().runner_id
    job_id = await submit_job(coordinator.api, runner_id, "hog-locally", HOG)
    job = await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed"}, timeout=30)
    assert job["status"] == "completed", job
    status, health = await coordinator.api.get(f"/runners/{runner_id}/health")
    assert status == 200, health
    assert "resource_limits" not in health["checks"], health
