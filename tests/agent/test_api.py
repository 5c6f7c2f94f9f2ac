"""The agent's own HTTP API answers the coordinator only: the runner's token, for its own runner id."""

from __future__ import annotations

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import Api, assert_error


async def test_only_the_runners_token_for_its_own_id_is_accepted(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    identity = agent.identity()
    base = f"http://127.0.0.1:{agent.port}"
    api = Api(f"{base}/api", None)
    try:
        config = f"/runners/{identity.runner_id}/config"
        status, body = await api.get(config)
        assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")
        # The coordinator's admin key is not the runner's token.
        status, body = await api.get(config, headers={"X-API-Key": coordinator.api.api_key or ""})
        assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")
        status, body = await api.get(config, headers={"Authorization": "Bearer reg_token_not-this-one"})
        assert_error(status, body, 403, "AUTHORIZATION_FAILED")
        own = {"Authorization": f"Bearer {identity.token}"}
        status, body = await api.get("/runners/runner_00000000-0000-4000-8000-000000000000/config", headers=own)
        assert_error(status, body, 404, "RUNNER_NOT_FOUND")
        status, body = await api.get(config, headers=own)
        assert status == 200 and body["runner_id"] == identity.runner_id
        # A job pushed by anyone else is refused and never runs.
        status, body = await api.post(f"/runners/{identity.runner_id}/jobs", {"job_id": "x"})
        assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")
        assert agent.supervisor.queued_jobs == 0 and agent.supervisor.active_jobs == 0
    finally:
        await api.close()
    probe = Api(base, None)  # its liveness probe needs no token
    try:
        status, body = await probe.get("/health")
        assert status == 200 and body["runner_id"] == identity.runner_id
    finally:
        await probe.close()
