"""Calls the coordinator passes on to agents."""

from __future__ import annotations

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import assert_error, registration


async def test_an_agent_that_serves_another_runner_makes_the_runner_unavailable(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    # Registered through the API at the live agent's host and port: that agent does not serve it.
    _, impostor = await coordinator.api.post(
        "/runners/register", registration(name="elsewhere", host="127.0.0.1", port=agent.port)
    )
    status, body = await coordinator.api.get(f"/runners/{impostor['runner_id']}/config")
    error = assert_error(status, body, 503, "RUNNER_UNAVAILABLE")
    assert error["details"]["agent_error"] == "AUTHORIZATION_FAILED"
    assert f"127.0.0.1:{agent.port}" in error["message"]
    # The agent's own runner is unaffected.
    status, _ = await coordinator.api.get(f"/runners/{agent.identity().runner_id}/config")
    assert status == 200
