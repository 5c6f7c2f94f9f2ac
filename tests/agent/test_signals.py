"""Signals to a real ``python -m agent``: SIGTERM stops gracefully, a second SIGTERM cancels, SIGHUP reloads."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from tests.conftest import CoordinatorHandle, StartAgentProcess
from tests.helpers import (
    TERMINAL,
    Api,
    DaemonProcess,
    ProcessMarker,
    agent_config_file,
    submit_job,
    wait_for,
    wait_process_runner,
)


async def _logged(proc: DaemonProcess, event: str, timeout: float = 10.0) -> None:
    """Until the agent's JSON log has ``event`` (how a test knows a signal was handled)."""

    async def probe() -> bool:
        for line in proc.log().splitlines():
            try:
                if json.loads(line).get("event") == event:
                    return True
            except (ValueError, AttributeError):
                continue
        return False

    await wait_for(probe, timeout, what=f"agent log event {event!r}")


async def _max_concurrent_jobs(api: Api, runner_id: str) -> int:
    status, body = await api.get(f"/runners/{runner_id}/config")
    assert status == 200, body
    return int(body["configuration"]["max_concurrent_jobs"])


async def test_sigterm_lets_the_running_job_complete_then_exits_0(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path
) -> None:
    api = coordinator.api
    config = agent_config_file(tmp_path / "agent.yaml", shutdown_timeout=10)
    proc = agent_process(coordinator.url, RUSTCI_CONFIG=str(config), RUSTCI_MAX_CONCURRENT_JOBS="1")
    runner_id = await wait_process_runner(api, proc)
    running = await submit_job(api, runner_id, "finishing", "sleep 1")
    await api.wait_job(runner_id, running, {"running"})
    waiting = await submit_job(api, runner_id, "waiting", "true")

    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit(timeout=10) == 0
    # The agent reported before it exited: nothing can change these any more.
    assert (await api.job(runner_id, running))["status"] == "completed"
    job = await api.job(runner_id, waiting)
    assert job["status"] == "queued" and job["attempts"] == [], "a stopping agent started a queued job"


async def test_a_second_sigterm_cancels_the_running_job_at_once(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path, process_marker: Any
) -> None:
    api = coordinator.api
    config = agent_config_file(tmp_path / "agent.yaml", shutdown_timeout=60, kill_grace_period=5)
    proc = agent_process(coordinator.url, RUSTCI_CONFIG=str(config))
    runner_id = await wait_process_runner(api, proc)
    marker: ProcessMarker = process_marker()
    job_id = await submit_job(api, runner_id, "long", marker.background())
    await api.wait_job(runner_id, job_id, {"running"})
    await marker.wait_running(3)

    proc.signal(signal.SIGTERM)
    await _logged(proc, "stopping gracefully")
    assert proc.alive() and (await api.job(runner_id, job_id))["status"] == "running", "the first SIGTERM waits"
    began = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit(timeout=10) == 0
    took = time.monotonic() - began
    assert took < 4, f"exit took {took:.2f}s after the second SIGTERM"
    job = await api.job(runner_id, job_id)
    assert job["status"] == "cancelled", job
    await marker.assert_gone()


async def test_sighup_applies_an_edited_config_file_live(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path
) -> None:
    api = coordinator.api
    config = agent_config_file(tmp_path / "agent.yaml", max_concurrent_jobs=1, shutdown_timeout=3)
    proc = agent_process(coordinator.url, RUSTCI_CONFIG=str(config))
    runner_id = await wait_process_runner(api, proc)
    assert await _max_concurrent_jobs(api, runner_id) == 1

    agent_config_file(config, max_concurrent_jobs=3, shutdown_timeout=3)
    proc.signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return await _max_concurrent_jobs(api, runner_id) == 3

    await wait_for(reloaded, 5, what="max_concurrent_jobs 3 after SIGHUP")

    async def registry_knows() -> bool:
        _, runner = await api.get(f"/runners/{runner_id}")
        return bool(runner["metadata"].get("max_concurrent_jobs") == 3)

    await wait_for(registry_knows, 5, what="the registry to show the reloaded limit")

    # A broken file is refused as a whole; the agent keeps running with what it has.
    agent_config_file(config, max_concurrent_jobs=0, shutdown_timeout=3)
    proc.signal(signal.SIGHUP)
    await _logged(proc, "config reload failed; keeping the running configuration")
    assert proc.alive()
    assert await _max_concurrent_jobs(api, runner_id) == 3
    job_id = await submit_job(api, runner_id, "still-working", "true")
    assert (await api.wait_job(runner_id, job_id, TERMINAL))["status"] == "completed"
    assert await proc.stop() == 0


async def test_sighup_keeps_settings_made_through_the_api(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path
) -> None:
    api = coordinator.api
    config = agent_config_file(tmp_path / "agent.yaml", max_concurrent_jobs=1, shutdown_timeout=3)
    proc = agent_process(coordinator.url, RUSTCI_CONFIG=str(config))
    runner_id = await wait_process_runner(api, proc)
    status, body = await api.put(f"/runners/{runner_id}/config", {"max_concurrent_jobs": 2})
    assert status == 200, body

    agent_config_file(config, max_concurrent_jobs=5, shutdown_timeout=4)
    proc.signal(signal.SIGHUP)
    await _logged(proc, "configuration reloaded")
    assert await _max_concurrent_jobs(api, runner_id) == 2  # the API's value stands over the file's
    assert '"kept_api_values": ["max_concurrent_jobs"]' in proc.log()
    assert await proc.stop() == 0
