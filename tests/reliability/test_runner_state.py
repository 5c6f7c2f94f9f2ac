"""The runner's state and whether it takes jobs change together, through one owner, and each change is told."""

from __future__ import annotations

from structlog.testing import capture_logs

from agent.runner_state import RunnerState
from shared.models import AgentState
from tests.conftest import CoordinatorHandle, StartAgent


class _Jobs:
    def __init__(self) -> None:
        self.accepting = True
        self.resumed = 0

    def resume_accepting(self) -> None:
        self.accepting = True
        self.resumed += 1


def test_every_verb_sets_the_state_and_the_accepting_switch_together() -> None:
    jobs = _Jobs()
    told: list[AgentState] = []
    owner = RunnerState(jobs, told.append)
    with capture_logs() as logs:
        owner.start()
        assert (owner.state, jobs.accepting) == ("running", True)
        owner.error()
        assert (owner.state, jobs.accepting) == ("error", False)
        assert owner.recovered() is True
        assert (owner.state, jobs.accepting) == ("running", True)
        owner.transition("restarting")
        assert (owner.state, jobs.accepting) == ("restarting", False)
        owner.stop()
        assert (owner.state, jobs.accepting) == ("stopped", False)
        # Recovery of the executor never restarts a runner that was stopped meanwhile.
        assert owner.recovered() is False
        assert (owner.state, jobs.accepting) == ("stopped", False)
    assert told == ["running", "error", "running", "restarting", "stopped"]
    changes = [(e["before"], e["state"]) for e in logs if e["event"] == "runner state changed"]
    assert changes == [
        ("starting", "running"),
        ("running", "error"),
        ("error", "running"),
        ("running", "restarting"),
        ("restarting", "stopped"),
    ]
    assert jobs.resumed == 2  # a resume wakes the queue, so waiting jobs start at once


async def test_an_agent_stopped_and_started_through_the_api_keeps_the_pair_in_step(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    assert (agent.state, agent.supervisor.accepting) == ("running", True)
    status, body = await coordinator.api.post(f"/runners/{runner_id}/stop", {"graceful": False})
    assert status == 200, body
    assert (agent.state, agent.supervisor.accepting) == ("stopped", False)
    status, body = await coordinator.api.post(f"/runners/{runner_id}/start")
    assert status == 200, body
    await coordinator.api.wait_runner_status(runner_id, "active")
    assert (agent.state, agent.supervisor.accepting) == ("running", True)
