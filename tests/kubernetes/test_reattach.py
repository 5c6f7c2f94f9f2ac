"""An agent process killed with SIGKILL while its Kubernetes job's pod runs, then started again on the same state:
it re-attaches to the pod and the job finishes normally, every line reaching the coordinator once and in order;
and the agent never starts a job it already runs a second time (two runs of one attempt share its pod and log).

The agent is a real ``python -m agent`` subprocess; the cluster is the emulated one of ``tests/kubernetes/cluster.py``
(it lives in the test's process, so it outlives the agent like a real cluster would)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import CoordinatorHandle, StartAgent, StartAgentProcess
from tests.helpers import agent_config_file, free_port, job_output, submit_job, wait_for, wait_process_runner
from tests.kubernetes.cluster import EmulatedCluster, _stamp

BEFORE, AFTER = 5, 10


def _pods_of(cluster: EmulatedCluster, job_id: str) -> list[dict[str, Any]]:
    return [p for p in cluster.pods() if p["metadata"]["labels"].get("rustci.job_id") == job_id]


async def test_reattach_after_sigkill_finishes_the_job_with_every_line_once_and_the_same_pod(
    cluster: EmulatedCluster, coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path
) -> None:
    api = coordinator.api
    state = tmp_path / "reattach"
    config = agent_config_file(tmp_path / "agent.yaml", shutdown_timeout=3, **cluster.settings())
    port = free_port()
    first = agent_process(coordinator.url, state_name="reattach", port=port, RUSTCI_CONFIG=str(config))
    runner_id = await wait_process_runner(api, first)

    gate = tmp_path / "gate"
    # Numbered lines over a few seconds: some before the gate (the agent is killed while the step waits there,
    # bounded to 30 s), the rest after it, a tenth of a second apart; then a second step.
    step = (
        f'i=1; while [ $i -le {BEFORE} ]; do echo "line $i"; i=$((i+1)); done;'
        f' n=0; while [ ! -e "{gate}" ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done;'
        f' while [ $i -le {BEFORE + AFTER} ]; do echo "line $i"; i=$((i+1)); sleep 0.1; done'
    )
    job_id = await submit_job(api, runner_id, "reattach", step, "echo second step")

    async def first_lines_shipped() -> bool:
        return len(await job_output(api, runner_id, job_id)) >= BEFORE

    await wait_for(first_lines_shipped, 20, what="the lines before the gate at the coordinator")
    [pod] = _pods_of(cluster, job_id)
    name = pod["metadata"]["name"]
    run = cluster.kubelet.pods[("default", name)]  # the kubelet's run of the pod (its uid: one per creation)
    cursor_file = state / "kubernetes" / f"{job_id}-1.json"

    async def cursor_at_last_line() -> bool:
        # The agent has saved that it read up to the last line the pod wrote (the step now waits at the gate).
        try:
            cursor = json.loads(cursor_file.read_text())
        except (OSError, ValueError):
            return False
        return bool(run.lines) and cursor["stamp"] == _stamp(run.lines[-1][0])

    await wait_for(cursor_at_last_line, 10, what="the agent's cursor to reach the pod's last line")

    first.kill()  # SIGKILL (and reaped): no drain, no cleanup, no last report
    assert (await api.job(runner_id, job_id))["status"] == "running"
    assert [p["metadata"]["name"] for p in _pods_of(cluster, job_id)] == [name]
    assert run.process is not None and run.process.returncode is None, "the pod runs on without the agent"

    again = agent_process(coordinator.url, state_name="reattach", port=port, RUSTCI_CONFIG=str(config))
    assert await wait_process_runner(api, again) == runner_id
    gate.touch()

    job = await api.wait_job(runner_id, job_id, {"completed", "failed", "timed_out", "cancelled"}, timeout=30)
    assert job["status"] == "completed", (job["status"], job.get("reason"), again.log()[-3000:])
    assert job["attempt"] == 1, job
    assert [(s["status"], s["exit_code"]) for s in job["steps"]] == [("completed", 0), ("completed", 0)], job
    expected = [f"line {i}" for i in range(1, BEFORE + AFTER + 1)] + ["second step"]
    assert await job_output(api, runner_id, job_id) == expected

    # The pod was created once (never recreated) and is deleted after the job (cleanup_policy "always").
    assert cluster.kubelet.started == [name], cluster.kubelet.started
    assert cluster.kubelet.pods.get(("default", name)) in (None, run)
    assert run.exited and run.process.returncode == 0, "the same pod ran the job to its end"

    async def cleaned_up() -> bool:
        return not _pods_of(cluster, job_id) and not cluster.configmaps() and not cursor_file.exists()

    await wait_for(cleaned_up, 10, what="the job's pod, ConfigMap and cursor to be deleted")
    assert cluster.kubelet.deleted == [name], cluster.kubelet.deleted
    assert "agent restarted" not in json.dumps(job)


async def test_reattach_resume_on_a_live_agent_does_not_start_a_running_job_twice(
    cluster: EmulatedCluster, coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    api = coordinator.api
    agent = await start_agent(**cluster.settings())
    runner_id = agent.identity().runner_id
    step = f'i=1; while [ $i -le {BEFORE + AFTER} ]; do echo "line $i"; i=$((i+1)); sleep 0.1; done'
    job_id = await submit_job(api, runner_id, "held", step, "echo second step")

    async def some_lines_shipped() -> bool:
        return len(await job_output(api, runner_id, job_id)) >= 3

    await wait_for(some_lines_shipped, 20, what="the first lines at the coordinator")
    # The store lists the job as open and running, and its pod can be re-attached to: it is still the one job.
    await agent.supervisor.resume(agent.executor.recover)
    assert agent.supervisor.active_jobs == 1 and agent.supervisor.queued_jobs == 0

    job = await api.wait_job(runner_id, job_id, {"completed", "failed", "timed_out", "cancelled"}, timeout=30)
    assert job["status"] == "completed", job.get("reason")
    expected = [f"line {i}" for i in range(1, BEFORE + AFTER + 1)] + ["second step"]
    assert await job_output(api, runner_id, job_id) == expected
    assert len(cluster.kubelet.started) == 1, cluster.kubelet.started
