"""A runner's live configuration: ``GET``/``PUT /runners/{id}/config`` — shape, validation, live effect, persistence."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.conftest import CoordinatorHandle, StartAgent, StartAgentProcess
from tests.helpers import (
    ISO_UTC_PATTERN,
    TERMINAL,
    Api,
    ProcessMarker,
    agent_config_file,
    assert_error,
    submit_job,
    wait_for,
    wait_process_runner,
)

UPDATED = {
    "success": True,
    "message": "Configuration updated successfully",
    "restart_required": False,
}


async def _config(api: Api, runner_id: str) -> dict[str, Any]:
    status, body = await api.get(f"/runners/{runner_id}/config")
    assert status == 200, body
    return dict(body)


async def _put(api: Api, runner_id: str, settings: Any) -> dict[str, Any]:
    status, body = await api.put(f"/runners/{runner_id}/config", settings)
    assert status == 200, body
    for key, value in UPDATED.items():
        assert body[key] == value, body
    return dict(body)


async def test_get_config_has_the_spec_shape(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent(
        max_concurrent_jobs=5,
        job_timeout=3600,
        cleanup_policy="always",
        resource_limits={"cpu_limit": "2000m", "memory_limit": "4Gi", "disk_limit": "10Gi"},
        docker_config={"privileged": False, "network_mode": "bridge", "volumes": ["/tmp:/tmp:rw"]},
    )
    runner_id = agent.identity().runner_id
    body = await _config(coordinator.api, runner_id)
    assert set(body) == {"runner_id", "configuration", "last_updated"}, body
    assert body["runner_id"] == runner_id
    assert re.match(ISO_UTC_PATTERN, body["last_updated"]), body
    configuration = body["configuration"]
    assert {k: configuration[k] for k in ("max_concurrent_jobs", "job_timeout", "cleanup_policy")} == {
        "max_concurrent_jobs": 5,
        "job_timeout": 3600,
        "cleanup_policy": "always",
    }
    assert configuration["resource_limits"] == {"cpu_limit": "2000m", "memory_limit": "4Gi", "disk_limit": "10Gi"}
    assert configuration["docker_config"] == {
        "privileged": False,
        "network_mode": "bridge",
        "volumes": ["/tmp:/tmp:rw"],
    }


async def test_an_invalid_update_is_refused_naming_the_field_and_changes_nothing(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(max_concurrent_jobs=2, job_timeout=600, cleanup_policy="on_success")
    runner_id = agent.identity().runner_id
    api = coordinator.api
    before = await _config(api, runner_id)
    cases: list[tuple[Any, str | None]] = [
        ({"max_concurrent_jobs": 0}, "max_concurrent_jobs"),
        ({"max_concurrent_jobs": 1001}, "max_concurrent_jobs"),
        ({"max_concurrent_jobs": True}, "max_concurrent_jobs"),
        ({"max_concurrent_jobs": 2.5}, "max_concurrent_jobs"),
        ({"job_timeout": -5}, "job_timeout"),
        ({"job_timeout": "600"}, "job_timeout"),
        ({"kill_grace_period": True}, "kill_grace_period"),
        ({"cleanup_policy": "sometimes"}, "cleanup_policy"),
        ({"max_concurent_jobs": 3}, "max_concurent_jobs"),
        # one bad field among good ones: none of them applies
        ({"job_timeout": 100, "cleanup_policy": "never", "max_concurrent_jobs": 0}, "max_concurrent_jobs"),
        ({"job_timeout": 100, "resource_limits": {"cpu_limit": "lots"}}, "resource_limits.cpu_limit"),
        ({"docker_config": {"network_mode": "wifi"}}, "docker_config.network_mode"),
        ({"docker_config": {"volumes": ["no-colon"]}}, "docker_config.volumes[0]"),
        ({}, None),
    ]
    for body, field in cases:
        status, answer = await api.put(f"/runners/{runner_id}/config", body)
        error = assert_error(status, answer, 400, "INVALID_REQUEST")
        if field is not None:
            assert error["details"].get("field") == field, (body, answer)
    for raw in ("[]", "not json"):
        status, answer = await api.put(
            f"/runners/{runner_id}/config", data=raw, headers={"Content-Type": "application/json"}
        )
        assert_error(status, answer, 400, "INVALID_REQUEST")
    assert await _config(api, runner_id) == before
    assert agent.supervisor.max_concurrent_jobs == 2


async def test_raising_max_concurrent_jobs_starts_queued_jobs_at_once(
    coordinator: CoordinatorHandle, start_agent: StartAgent, process_marker: Any
) -> None:
    agent = await start_agent(max_concurrent_jobs=1)
    runner_id = agent.identity().runner_id
    api = coordinator.api
    marker: ProcessMarker = process_marker()
    jobs = [await submit_job(api, runner_id, f"waits-{i}", marker.sleep(i)) for i in range(3)]
    await api.wait_job(runner_id, jobs[0], {"running"})

    async def on_the_agent() -> bool:
        _, runner = await api.get(f"/runners/{runner_id}")
        return bool(runner["current_load"]["queued_jobs"] == 2)

    await wait_for(on_the_agent, 5, what="two jobs waiting in the agent's queue")
    before = await _config(api, runner_id)

    await _put(api, runner_id, {"max_concurrent_jobs": 3})

    async def all_running() -> bool:
        statuses = [(await api.job(runner_id, job_id))["status"] for job_id in jobs]
        return statuses == ["running"] * 3

    await wait_for(all_running, 2, what="the queued jobs to start once the limit was raised")
    after = await _config(api, runner_id)
    assert after["configuration"] == {**before["configuration"], "max_concurrent_jobs": 3}
    assert after["last_updated"] > before["last_updated"]
    _, runner = await api.get(f"/runners/{runner_id}")
    assert runner["metadata"]["max_concurrent_jobs"] == 3, "the registry's view of the limit (for estimates)"

    for job_id in jobs:
        status, body = await api.post(f"/runners/{runner_id}/jobs/{job_id}/cancel")
        assert status == 200, body
    for job_id in jobs:
        assert (await api.wait_job(runner_id, job_id, TERMINAL, timeout=5))["status"] == "cancelled"
    await marker.assert_gone()


async def test_a_new_job_timeout_applies_to_the_next_job(
    coordinator: CoordinatorHandle, start_agent: StartAgent, process_marker: Any
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    api = coordinator.api
    marker: ProcessMarker = process_marker()
    await _put(api, runner_id, {"job_timeout": 1})
    job_id = await submit_job(api, runner_id, "no-timeout-of-its-own", marker.sleep())
    job = await api.wait_job(runner_id, job_id, TERMINAL, timeout=5)
    assert job["status"] == "timed_out", job
    await marker.assert_gone()


async def test_an_update_persists_across_an_agent_restart(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path
) -> None:
    api = coordinator.api
    config = agent_config_file(tmp_path / "agent.yaml", max_concurrent_jobs=1, shutdown_timeout=3)
    proc = agent_process(coordinator.url, state_name="persist", RUSTCI_CONFIG=str(config))
    port = proc.env["RUSTCI_AGENT_PORT"]
    runner_id = await wait_process_runner(api, proc)
    assert (await _config(api, runner_id))["configuration"]["max_concurrent_jobs"] == 1

    settings = {
        "max_concurrent_jobs": 3,
        "job_timeout": 1234,
        "cleanup_policy": "never",
        "resource_limits": {"memory_limit": "4Gi"},
    }
    await _put(api, runner_id, settings)
    updated = await _config(api, runner_id)
    assert await proc.stop() == 0

    proc = agent_process(coordinator.url, state_name="persist", port=int(port), RUSTCI_CONFIG=str(config))
    assert await wait_process_runner(api, proc) == runner_id
    after = await _config(api, runner_id)
    assert after == updated, "the saved configuration did not survive the restart"
    configuration = after["configuration"]
    assert configuration["max_concurrent_jobs"] == 3
    assert configuration["job_timeout"] == 1234
    assert configuration["cleanup_policy"] == "never"
    assert configuration["resource_limits"]["memory_limit"] == "4Gi"
    _, runner = await api.get(f"/runners/{runner_id}")
    assert runner["metadata"]["max_concurrent_jobs"] == 3, "the re-announced limit is the file's, not the saved one"
