"""What only the Kubernetes executor has: its pod per attempt (spec, labels, limits, deadline), deleting it on
cancel, orphans at start, re-attaching after the agent is killed, a log stream that breaks, and its health.

Runs against the emulated cluster of ``tests/kubernetes/cluster.py`` (kmock's emulator over HTTP, a kubelet that
runs pods as local processes); the job semantics every executor shares are in ``tests/semantics``."""

from __future__ import annotations

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import job_output, submit_job
from tests.kubernetes.cluster import EmulatedCluster


async def test_a_job_runs_in_a_pod_and_its_output_reaches_the_coordinator(
    cluster: EmulatedCluster, coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(**cluster.settings())
    runner_id = agent.identity().runner_id
    job_id = await submit_job(coordinator.api, runner_id, "hello", "echo one; echo two", "echo three; exit 3")
    job = await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed"})
    assert job["status"] == "failed" and job["exit_code"] == 3, (job["reason"], job["steps"])
    assert [(s["status"], s["exit_code"]) for s in job["steps"]] == [("completed", 0), ("failed", 3)], job
    assert await job_output(coordinator.api, runner_id, job_id) == ["one", "two", "three"]
    assert cluster.pods() == [] and cluster.configmaps() == []  # cleanup_policy always
