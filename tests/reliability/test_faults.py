"""Faults injected into real daemons through public interfaces (HTTP, processes, signals): 0 jobs lost, 0 doubled.

Each test checks, for every job it got a 201 for: exactly one terminal state, ``completed``, and its output
exactly once, in order.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from rustci.client import RustCIClient
from tests.conftest import API_KEY, CoordinatorHandle, StartAgent, StartAgentProcess, wait_http_ok
from tests.helpers import TERMINAL, Api, DaemonProcess, free_port, wait_for, wait_process_runner
from tests.reliability.common import job_output


def _job(name: str, run: str) -> dict[str, object]:
    return {"name": name, "steps": [{"name": "s", "run": run}]}


async def _all_completed_once(api: Api, runner_id: str, expected: dict[str, list[str]], timeout: float) -> None:
    """Every job in ``expected`` (job id → the lines it prints) completed, with its lines once and in order."""

    async def statuses() -> dict[str, str] | None:
        status, body = await api.get(f"/runners/{runner_id}/jobs?limit=1000")
        assert status == 200, body
        seen = {job["job_id"]: job["status"] for job in body["jobs"]}
        return seen if all(seen.get(job_id) in TERMINAL for job_id in expected) else None

    seen = await wait_for(statuses, timeout, interval=0.2, what=f"{len(expected)} jobs to end")
    assert set(seen) == set(expected), "a job was lost, or one the client never got a 201 for appeared"
    not_completed = {job_id: s for job_id, s in seen.items() if s != "completed"}
    assert not not_completed, not_completed
    for job_id, lines in expected.items():
        assert await job_output(api, runner_id, job_id) == lines, job_id


async def test_sigkill_of_the_coordinator_with_200_jobs_in_flight(
    coordinator_process: Callable[..., DaemonProcess], agent_process: StartAgentProcess
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    coordinator = coordinator_process(port, RUSTCI_RATE_LIMITS_ENABLED="false")
    api = Api(f"{url}/api", API_KEY)
    try:
        await wait_http_ok(f"{url}/api/health")
        agent = agent_process(url, RUSTCI_MAX_CONCURRENT_JOBS="8")
        runner_id = await wait_process_runner(api, agent, timeout=30)
        expected: dict[str, list[str]] = {}
        for n in range(200):
            status, body = await api.post(
                f"/runners/{runner_id}/jobs",
                {
                    "name": f"inflight-{n}",
                    "steps": [{"name": "s", "run": f"echo first-{n}; sleep 0.05; echo last-{n}"}],
                },
            )
            assert status == 201, body
            expected[body["job_id"]] = [f"first-{n}", f"last-{n}"]

        async def some_done() -> bool:
            status, body = await api.get(f"/runners/{runner_id}/jobs?status=completed&limit=1")
            return status == 200 and body["total_count"] >= 20

        await wait_for(some_done, 60, interval=0.05, what="the first jobs to finish")
        coordinator.proc.kill()  # type: ignore[union-attr]
        assert await coordinator.wait_exit(10) == -signal.SIGKILL
        coordinator_process(port, RUSTCI_RATE_LIMITS_ENABLED="false")  # same state directory and port
        await wait_http_ok(f"{url}/api/health")
        await _all_completed_once(api, runner_id, expected, timeout=120)
        assert agent.alive()
    finally:
        await api.close()


@pytest.mark.timeout(180)
async def test_sigstop_of_the_agent_for_45s_while_a_job_prints(
    tmp_path: Path, coordinator_process: Callable[..., DaemonProcess], agent_process: StartAgentProcess
) -> None:
    # Short liveness: heartbeats every 0.2 s, inactive after 1 s without one, checked every 0.1 s.
    config = tmp_path / "coordinator.yaml"
    config.write_text(yaml.safe_dump({"runners": {"liveness_multiplier": 5, "liveness_check_interval": 0.1}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    coordinator_process(port, RUSTCI_CONFIG=str(config), RUSTCI_RATE_LIMITS_ENABLED="false")
    api = Api(f"{url}/api", API_KEY)
    try:
        await wait_http_ok(f"{url}/api/health")
        agent = agent_process(url)
        runner_id = await wait_process_runner(api, agent, timeout=30)
        count = 100
        status, body = await api.post(
            f"/runners/{runner_id}/jobs",
            {
                "name": "prints",
                "steps": [{"name": "s", "run": f"for i in $(seq 1 {count}); do echo line-$i; sleep 0.5; done"}],
            },
        )
        assert status == 201, body
        job_id = body["job_id"]
        await api.wait_job(runner_id, job_id, {"running"})

        agent.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            await api.wait_runner_status(runner_id, "inactive", timeout=10)
            await asyncio.sleep(max(0.0, 45 - (time.monotonic() - stopped_at)))  # the fault itself: 45 s frozen
        finally:
            agent.signal(signal.SIGCONT)
        await api.wait_runner_status(runner_id, "active", timeout=15)
        finished = await api.wait_job(runner_id, job_id, TERMINAL, timeout=60)
        assert finished["status"] == "completed", finished
        assert await job_output(api, runner_id, job_id) == [f"line-{i}" for i in range(1, count + 1)]
    finally:
        await api.close()


@pytest.mark.timeout(300)
async def test_1000_submissions_from_50_threads_each_end_once_with_their_line_once(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(max_concurrent_jobs=16)
    runner_id = agent.identity().runner_id
    submitted: dict[str, list[str]] = {}
    lock = threading.Lock()

    def submit(n: int, client: RustCIClient) -> None:
        answer = client.submit_job(runner_id, {"name": f"many-{n}", "steps": [{"name": "s", "run": f"echo n-{n}"}]})
        with lock:
            submitted[answer["job_id"]] = [f"n-{n}"]

    def submit_all() -> None:
        local = threading.local()

        def work(n: int) -> None:
            if not hasattr(local, "client"):
                local.client = RustCIClient(coordinator.url, API_KEY)
            submit(n, local.client)

        with ThreadPoolExecutor(max_workers=50) as pool:
            for future in [pool.submit(work, n) for n in range(1000)]:
                future.result()

    await asyncio.to_thread(submit_all)
    assert len(submitted) == 1000, "two submissions got the same job id"
    await _all_completed_once(coordinator.api, runner_id, submitted, timeout=240)
