"""Nothing is lost or doubled across the channel: cuts mid-frame in both directions, restarts during a burst.

Real daemons on loopback with a TCP relay between agent and coordinator (``tests.relay``). Every check reads
what the coordinator stored: each job in exactly one terminal state, each log line once, in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import CoordinatorHandle, StartAgent, StartAgentProcess
from tests.helpers import TERMINAL, Api, free_port, submit_job, wait_for, wait_process_runner
from tests.log_support import stored_entries
from tests.relay import TcpProxy

LINES = 50


@pytest.fixture
async def relay(coordinator: CoordinatorHandle) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(coordinator.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def entries(coordinator: CoordinatorHandle, job_id: str) -> list[tuple[str, str]]:
    """(stream, message) of a job's stored log entries, in sequence order."""
    return [(e.stream, e.message) for e in await stored_entries(coordinator, job_id=job_id)]


def stdout_numbers(rows: list[tuple[str, str]]) -> list[int]:
    return [int(message) for stream, message in rows if stream == "stdout"]


def outcomes(rows: list[tuple[str, str]]) -> list[str]:
    """The job's terminal reports (``Job completed: ...``, ``Job failed: ...``) among its system entries."""
    return [m for s, m in rows if s == "system" and m.split(":")[0] in {f"Job {t}" for t in TERMINAL}]


async def all_terminal(api: Api, runner_id: str, job_ids: list[str], timeout: float = 60) -> dict[str, str]:
    async def probe() -> dict[str, str] | None:
        seen = {job_id: (await api.job(runner_id, job_id))["status"] for job_id in job_ids}
        return seen if all(status in TERMINAL for status in seen.values()) else None

    return await wait_for(probe, timeout, interval=0.1, what="every job to end")


async def test_a_job_delivery_cut_mid_frame_is_delivered_again_and_runs_once(
    coordinator: CoordinatorHandle, relay: TcpProxy, start_agent: StartAgent
) -> None:
    agent = await start_agent(coordinator={"url": relay.url})
    runner_id = agent.identity().runner_id
    relay.cut_down_on = b'"kind":"job"'  # the job frame is cut in its middle, coordinator -> agent
    job_id = await submit_job(coordinator.api, runner_id, "cut", f"seq 1 {LINES}")
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL, timeout=30)
    assert relay.cuts == 1 and agent.channel.connects >= 2
    assert job["status"] == "completed"
    rows = await entries(coordinator, job_id)
    assert stdout_numbers(rows) == list(range(1, LINES + 1))
    assert len(outcomes(rows)) == 1
    started = [m for s, m in rows if s == "system" and m.startswith("Job started")]
    assert len(started) == 1, started  # ran once, though it was delivered twice


async def test_an_event_batch_cut_mid_frame_is_sent_again_and_applied_once(
    coordinator: CoordinatorHandle, relay: TcpProxy, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent(coordinator={"url": relay.url})
    runner_id = agent.identity().runner_id
    go = tmp_path / "go"
    job_id = await submit_job(
        coordinator.api, runner_id, "cut", f"while [ ! -e {go} ]; do sleep 0.01; done; seq 1 20000"
    )
    await coordinator.api.wait_job(runner_id, job_id, {"running"})
    relay.cut_up_over = 16 * 1024  # the first big batch, agent -> coordinator, is cut in its middle
    go.touch()
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL, timeout=30)
    assert relay.cuts == 1 and agent.channel.connects >= 2
    assert job["status"] == "completed"
    rows = await entries(coordinator, job_id)
    assert stdout_numbers(rows) == list(range(1, 20_001))
    assert len(outcomes(rows)) == 1


async def test_lost_acknowledgements_duplicate_nothing(
    coordinator: CoordinatorHandle, relay: TcpProxy, start_agent: StartAgent
) -> None:
    agent = await start_agent(coordinator={"url": relay.url})
    runner_id = agent.identity().runner_id
    relay.lose_answers = True  # batches are applied; every acknowledgement is cut: the agent resends
    jobs = [await submit_job(coordinator.api, runner_id, f"j{i}", f"seq 1 {LINES}") for i in range(5)]
    await wait_for(lambda: _true(relay.answers_lost >= 3), 20, what="acknowledgements lost")
    relay.lose_answers = False
    statuses = await all_terminal(coordinator.api, runner_id, jobs)
    assert set(statuses.values()) == {"completed"}
    for job_id in jobs:
        rows = await entries(coordinator, job_id)
        assert stdout_numbers(rows) == list(range(1, LINES + 1))
        assert len(outcomes(rows)) == 1


async def test_restarting_either_side_during_a_burst_loses_and_doubles_nothing(
    coordinator: CoordinatorHandle, relay: TcpProxy, agent_process: StartAgentProcess
) -> None:
    api = coordinator.api
    port = free_port()
    agent = agent_process(relay.url, state_name="burst", port=port, RUSTCI_MAX_CONCURRENT_JOBS="4")
    runner_id = await wait_process_runner(api, agent)
    jobs = [await submit_job(api, runner_id, f"b{i}", f"seq 1 {LINES}; sleep 0.05") for i in range(40)]

    async def ended(count: int) -> bool:
        done = 0
        for job_id in jobs:
            done += (await api.job(runner_id, job_id))["status"] in TERMINAL
        return done >= count

    await wait_for(lambda: ended(8), 30, interval=0.05, what="the burst to be under way")
    await coordinator.restart()  # the coordinator goes away mid-burst and comes back on the same database
    await wait_for(lambda: ended(16), 30, interval=0.05, what="the burst to go on after the coordinator restart")
    agent.kill()  # SIGKILL: running jobs end as "agent restarted"; queued ones run after the restart
    agent_process(relay.url, state_name="burst", port=port, RUSTCI_MAX_CONCURRENT_JOBS="4")
    statuses = await all_terminal(api, runner_id, jobs, timeout=90)
    assert set(statuses.values()) <= {"completed", "failed"}
    assert list(statuses.values()).count("completed") >= 30
    for job_id, status in statuses.items():
        rows = await entries(coordinator, job_id)
        printed = stdout_numbers(rows)
        if status == "completed":
            assert len(outcomes(rows)) == 1, (job_id, outcomes(rows))  # exactly one terminal report
            assert printed == list(range(1, LINES + 1)), job_id
        else:
            # Ended by the kill: its outcome is the restarted agent's report, never a "completed" as well.
            assert outcomes(rows) == [], (job_id, outcomes(rows))
            assert (await api.job(runner_id, job_id))["reason"] == "agent restarted"
            assert printed == list(range(1, len(printed) + 1)), job_id  # a gapless prefix, nothing twice


async def _true(value: bool) -> bool:
    return value
