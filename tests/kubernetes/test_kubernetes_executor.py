"""What only the Kubernetes executor has: its pod per attempt (spec, labels, limits, deadline), deleting it on
cancel, orphans at start, re-attaching after the agent is killed, a log stream that breaks, and its health.

Runs against the emulated cluster of ``tests/kubernetes/cluster.py`` (kmock's emulator over HTTP, a kubelet that
runs pods as local processes); the job semantics every executor shares are in ``tests/semantics``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import (
    free_port,
    job_output,
    submit_job,
    wait_for,
)
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


def _pods_of(cluster: EmulatedCluster, job_id: str) -> list[dict[str, Any]]:
    return [p for p in cluster.pods() if p["metadata"]["labels"].get("rustci.job_id") == job_id]


async def _running_pod(cluster: EmulatedCluster, job_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        pods = _pods_of(cluster, job_id)
        if pods and (pods[0].get("status") or {}).get("phase") == "Running":
            return pods[0]
        return None

    pod: dict[str, Any] = await wait_for(probe, 15, what=f"a running pod of job {job_id}")
    return pod


async def test_the_pod_spec_carries_labels_limits_deadline_service_account_and_scheduling(
    cluster: EmulatedCluster, coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(
        **cluster.settings(
            service_account="ci-jobs",
            node_selector={"pool": "ci"},
            tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}],
            pull_policy="Never",
        ),
        resource_limits={"cpu_limit": "500m", "memory_limit": "256Mi", "disk_limit": "1Gi"},
        kill_grace_period=2,
    )
    runner_id = agent.identity().runner_id
    job_id = await submit_job(coordinator.api, runner_id, "inspect me", "sleep 30", timeout=120)
    pod = await _running_pod(cluster, job_id)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == f"rustci-{job_id.replace('_', '-')}-1"
    assert meta["namespace"] == "default"
    assert meta["labels"] == {"rustci.job_id": job_id, "rustci.attempt": "1", "rustci.runner_id": runner_id}
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 120
    assert spec["terminationGracePeriodSeconds"] == 2
    assert spec["serviceAccountName"] == "ci-jobs"
    assert spec["nodeSelector"] == {"pool": "ci"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}]
    (container,) = spec["containers"]
    assert container["image"] == "busybox:emulated" and container["imagePullPolicy"] == "Never"
    expected = {"cpu": "500m", "memory": "256Mi", "ephemeral-storage": "1Gi"}
    assert container["resources"] == {"requests": expected, "limits": expected}
    # The scripts come from a ConfigMap of the same name and labels.
    (config_map,) = [c for c in cluster.configmaps() if c["metadata"]["name"] == meta["name"]]
    assert config_map["metadata"]["labels"] == meta["labels"]
    assert config_map["data"]["step-0.sh"] == "sleep 30"
    status, body = await coordinator.api.post(f"/runners/{runner_id}/jobs/{job_id}/cancel", {})
    assert status in (200, 202), body


async def test_cancel_deletes_the_pod_and_ends_its_processes(
    cluster: EmulatedCluster, coordinator: CoordinatorHandle, start_agent: StartAgent, process_marker: Any
) -> None:
    agent = await start_agent(**cluster.settings(), kill_grace_period=1)
    runner_id = agent.identity().runner_id
    marker = process_marker()
    job_id = await submit_job(coordinator.api, runner_id, "cancel me", marker.background(), "echo never")
    await _running_pod(cluster, job_id)
    await marker.wait_running(3)
    status, body = await coordinator.api.post(f"/runners/{runner_id}/jobs/{job_id}/cancel", {})
    assert status in (200, 202), body
    job = await coordinator.api.wait_job(runner_id, job_id, {"cancelled"})
    assert job["steps"][0]["status"] == "cancelled", job
    assert _pods_of(cluster, job_id) == []
    assert cluster.kubelet.deleted == [f"rustci-{job_id.replace('_', '-')}-1"]
    await marker.assert_gone()


async def test_orphaned_pods_of_this_runner_are_deleted_at_start_and_others_kept(
    cluster: EmulatedCluster, coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    first = await start_agent(state_name="orphans", **cluster.settings())
    runner_id = first.identity().runner_id
    await first.stop(timeout=2)

    async def make_pod(name: str, runner: str) -> None:
        labels = {"rustci.job_id": f"job_{name}", "rustci.attempt": "1", "rustci.runner_id": runner}
        container = {"name": "job", "image": "x", "command": ["sleep", "30"]}
        await cluster.create(
            "pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": labels},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        )

    await make_pod("orphan-of-mine", runner_id)
    await make_pod("pod-of-another-runner", "runner_someone-else")
    again = await start_agent(state_name="orphans", **cluster.settings())
    assert again.identity().runner_id == runner_id
    names = {p["metadata"]["name"] for p in cluster.pods()}
    assert "orphan-of-mine" not in names
    assert "pod-of-another-runner" in names


async def test_health_reports_the_api_server_version_and_the_capability(
    cluster: EmulatedCluster, coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(**cluster.settings())
    runner_id = agent.identity().runner_id
    status, health = await coordinator.api.get(f"/runners/{runner_id}/health")
    assert status == 200, health
    assert health["checks"]["kubernetes_api"] == {"status": "pass", "version": "v1.30.0-kmock", "namespace": "default"}
    status, view = await coordinator.api.get(f"/runners/{runner_id}/status")
    assert status == 200 and view["capabilities_status"]["kubernetes"] == "available", view
    status, runner = await coordinator.api.get(f"/runners/{runner_id}")
    assert runner["type"] == "kubernetes" and runner["metadata"]["kubernetes_version"] == "v1.30.0-kmock", runner


async def test_an_unreachable_api_server_fails_the_check_with_the_reason(
    tmp_path: Path, coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    kubeconfig = tmp_path / "dead-kubeconfig.yaml"
    port = free_port()  # nobody listens there
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "gone",
            }
        )
    )
    agent = await start_agent(runner={"type": "kubernetes"}, kubernetes={"kubeconfig": str(kubeconfig)})
    runner_id = agent.identity().runner_id
    await coordinator.api.wait_runner_status(runner_id, "error", timeout=15)
    status, health = await coordinator.api.get(f"/runners/{runner_id}/health")
    assert status == 200, health
    check = health["checks"]["kubernetes_api"]
    assert check["status"] == "fail" and "not reachable" in check["error"], check
    status, view = await coordinator.api.get(f"/runners/{runner_id}/status")
    assert view["capabilities_status"]["kubernetes"] == "unavailable", view


async def test_a_log_stream_that_breaks_is_resumed_without_losing_or_repeating_a_line(
    cluster: EmulatedCluster, coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent(**cluster.settings())
    runner_id = agent.identity().runner_id
    go = tmp_path / "go"
    step = (
        f'for i in 1 2 3 4 5; do echo "before $i"; done; while [ ! -e "{go}" ]; do sleep 0.05; done;'
        ' for i in 1 2 3; do echo "after $i"; done'
    )
    job_id = await submit_job(coordinator.api, runner_id, "broken stream", step, "echo next step")

    async def shipped() -> bool:
        return len(await job_output(coordinator.api, runner_id, job_id)) >= 5

    await wait_for(shipped, 15, what="the first lines")
    assert await cluster.kubelet.break_log_streams() >= 1
    go.touch()
    job = await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed"})
    assert job["status"] == "completed", job
    expected = [f"before {i}" for i in range(1, 6)] + [f"after {i}" for i in range(1, 4)] + ["next step"]
    assert await job_output(coordinator.api, runner_id, job_id) == expected
    reopened = [r for r in cluster.kubelet.log_requests if "sinceSeconds" in r]
    assert reopened, cluster.kubelet.log_requests


async def test_a_script_over_the_argument_limit_runs_from_the_config_map(
    cluster: EmulatedCluster, coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(**cluster.settings())
    runner_id = agent.identity().runner_id
    script = ": " + "x" * 300_000 + "\necho big script ran"
    job_id = await submit_job(coordinator.api, runner_id, "big", script)
    job = await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed"})
    assert job["status"] == "completed", job
    assert await job_output(coordinator.api, runner_id, job_id) == ["big script ran"]
