"""Durable agent state: a ``python -m agent`` killed with SIGKILL and started again on the same state.

Queued jobs still run; a job that was running is retried if it has attempts left, else it fails with the
reason ``agent restarted``; whatever its processes were doing before the crash is ended; the coordinator hears
every outcome.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import CoordinatorHandle, StartAgentProcess
from tests.helpers import (
    TERMINAL,
    Api,
    DaemonProcess,
    ProcessMarker,
    agent_config_file,
    free_port,
    submit_job,
    wait_for,
    wait_process_runner,
)


async def _start(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path, slots: int
) -> tuple[DaemonProcess, str, Callable[[], DaemonProcess]]:
    """An agent process, its runner id, and how to start it again on the same state, port and settings."""
    config = agent_config_file(tmp_path / "agent.yaml", shutdown_timeout=3, kill_grace_period=2)
    launch = functools.partial(
        agent_process,
        coordinator.url,
        state_name="durable",
        port=free_port(),
        RUSTCI_CONFIG=str(config),
        RUSTCI_MAX_CONCURRENT_JOBS=str(slots),
    )
    proc = launch()
    return proc, await wait_process_runner(coordinator.api, proc), launch


async def _crash_and_restart(
    api: Api, proc: DaemonProcess, launch: Callable[[], DaemonProcess], runner_id: str, marker: ProcessMarker
) -> DaemonProcess:
    proc.kill()  # SIGKILL (and reaped): no drain, no last report
    # The job's processes outlive the agent (they run in their own session): ending them is the new agent's job.
    assert len(marker.alive()) == 3, marker.describe()
    again = launch()
    assert await wait_process_runner(api, again) == runner_id
    return again


async def _agent_queue(api: Api, runner_id: str, queued: int) -> None:
    async def probe() -> bool:
        _, runner = await api.get(f"/runners/{runner_id}")
        return bool(runner["current_load"]["queued_jobs"] == queued)

    await wait_for(probe, 5, what=f"{queued} job(s) waiting in the agent's own queue")


async def test_after_a_crash_queued_jobs_run_and_the_running_job_fails_as_agent_restarted(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path, process_marker: Any
) -> None:
    api = coordinator.api
    proc, runner_id, launch = await _start(coordinator, agent_process, tmp_path, slots=1)
    marker: ProcessMarker = process_marker()
    running = await submit_job(api, runner_id, "interrupted", marker.background())
    await api.wait_job(runner_id, running, {"running"})
    queued = [await submit_job(api, runner_id, f"queued-{i}", "true") for i in range(2)]
    await _agent_queue(api, runner_id, 2)  # delivered: the agent holds them, not the coordinator
    await marker.wait_running(3)

    proc = await _crash_and_restart(api, proc, launch, runner_id, marker)

    job = await api.wait_job(runner_id, running, TERMINAL, timeout=10)
    assert job["status"] == "failed", job
    assert job["reason"] == "agent restarted", job
    assert [(a["attempt"], a["status"], a["reason"]) for a in job["attempts"]] == [(1, "failed", "agent restarted")]
    for job_id in queued:
        assert (await api.wait_job(runner_id, job_id, TERMINAL, timeout=10))["status"] == "completed"
    await marker.assert_gone()  # the crashed agent's processes were ended by the new one
    assert await proc.stop() == 0


async def test_after_a_crash_a_running_job_with_retries_left_runs_again_and_completes(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path, process_marker: Any
) -> None:
    api = coordinator.api
    proc, runner_id, launch = await _start(coordinator, agent_process, tmp_path, slots=2)
    marker: ProcessMarker = process_marker()
    # Attempt 1 hangs until the crash; attempt 2 completes.
    step = f'if [ "$RUSTCI_JOB_ATTEMPT" = 1 ]; then {marker.background()}; fi'
    job_id = await submit_job(api, runner_id, "retried", step, retry_count=1)
    await api.wait_job(runner_id, job_id, {"running"})
    await marker.wait_running(3)

    proc = await _crash_and_restart(api, proc, launch, runner_id, marker)

    job = await api.wait_job(runner_id, job_id, TERMINAL, timeout=10)
    assert job["status"] == "completed", job
    assert job["attempt"] == 2, job
    attempts = [(a["attempt"], a["status"], a["reason"]) for a in job["attempts"]]
    assert attempts == [(1, "failed", "agent restarted"), (2, "completed", None)], job
    await marker.assert_gone()
    assert await proc.stop() == 0
