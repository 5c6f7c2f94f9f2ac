"""The agent's own HTTP API: a local health probe and the Prometheus scrape, nothing the coordinator calls.

Jobs and control reach the agent only over the channel it opened to the coordinator, so its listening port
takes no job, configuration or control call from anyone, with or without the runner's token.
"""

from __future__ import annotations

import pytest

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import Api, assert_error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/runners/{id}/jobs"),
        ("GET", "/api/runners/{id}/config"),
        ("PUT", "/api/runners/{id}/config"),
        ("POST", "/api/runners/{id}/stop"),
        ("GET", "/api/runners/{id}/status"),
    ],
)
async def test_the_agent_port_takes_no_job_or_control_call(
    coordinator: CoordinatorHandle, start_agent: StartAgent, method: str, path: str
) -> None:
    agent = await start_agent()
    identity = agent.identity()
    api = Api(f"http://127.0.0.1:{agent.port}", None)
    try:
        own = {"Authorization": f"Bearer {identity.token}"}
        status, body = await api.request(method, path.format(id=identity.runner_id), json={}, headers=own)
        assert_error(status, body, 404, "NOT_FOUND")
        assert agent.supervisor.queued_jobs == 0 and agent.supervisor.active_jobs == 0
    finally:
        await api.close()


async def test_health_and_metrics_need_no_token(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent()
    probe = Api(f"http://127.0.0.1:{agent.port}", None)
    try:
        status, body = await probe.get("/health")
        assert status == 200 and body["runner_id"] == agent.identity().runner_id
        assert body["connected"] is True
        status, text = await probe.get("/metrics")
        assert status == 200 and "rustci_agent" in text
    finally:
        await probe.close()
