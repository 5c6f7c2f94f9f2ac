"""``RustCIClient`` against a real in-process coordinator (and agent).

The client is blocking, so every call runs in a thread (``asyncio.to_thread``) while the coordinator keeps
serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rustci import JobWaitTimeout, RustCIClient
from shared import errors
from tests.conftest import API_KEY, CoordinatorHandle, StartAgent, coordinator_config, running_coordinator
from tests.helpers import free_port, registration

T = TypeVar("T")


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture
async def client(coordinator: CoordinatorHandle) -> AsyncIterator[RustCIClient]:
    sdk = RustCIClient(coordinator.url, api_key=API_KEY, timeout=10)
    try:
        yield sdk
    finally:
        sdk.close()


HELLO = {"name": "hello", "steps": [{"name": "greet", "run": "echo Hello"}]}


async def test_registry_round_trip(client: RustCIClient) -> None:
    registered = await call(client.register_runner, registration(name="sdk-runner", tags=["sdk", "docker"]))
    assert registered["success"] is True
    runner_id = registered["runner_id"]
    assert registered["registration_token"]

    listed = await call(client.list_runners, status="active", type="docker", tags=["sdk"])
    assert [r["id"] for r in listed["runners"]] == [runner_id]
    assert listed["total_count"] == 1 and listed["has_more"] is False
    assert (await call(client.list_runners, tags="nope"))["runners"] == []
    assert (await call(client.list_runners, limit=1, offset=1))["runners"] == []

    updated = await call(client.update_runner, runner_id, {"name": "renamed", "metadata": {"rack": "b2"}})
    assert updated["success"] is True
    runner = await call(client.get_runner, runner_id)
    assert runner["name"] == "renamed"
    assert runner["metadata"]["rack"] == "b2"
    assert runner["metadata"]["docker_version"] == "24.0.0"  # metadata is merged, not replaced

    assert (await call(client.delete_runner, runner_id))["success"] is True
    with pytest.raises(errors.RunnerNotFound):
        await call(client.get_runner, runner_id)


async def test_base_url_may_name_the_api_prefix(coordinator: CoordinatorHandle) -> None:
    with RustCIClient(coordinator.api_url + "/", api_key=API_KEY) as sdk:
        assert sdk.api_url == coordinator.api_url
        assert (await call(sdk.health))["status"] == "ok"


async def test_job_runs_on_an_agent(client: RustCIClient, start_agent: StartAgent) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    job = {**HELLO, "environment": {"WHO": "sdk"}, "steps": [{"name": "greet", "run": 'echo "hi $WHO"'}]}
    submitted = await call(client.submit_job, runner_id, job)
    assert submitted["success"] is True and submitted["status"] == "queued"
    job_id = submitted["job_id"]

    final = await call(client.wait_for_job, runner_id, job_id, timeout=30)
    assert final["status"] == "completed"
    assert final["exit_code"] == 0
    assert [step["name"] for step in final["steps"]] == ["greet"]

    assert (await call(client.get_job, runner_id, job_id))["status"] == "completed"
    listed = await call(client.list_jobs, runner_id, status="completed")
    assert [j["job_id"] for j in listed["jobs"]] == [job_id]


async def test_runner_control_and_configuration(client: RustCIClient, start_agent: StartAgent) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id

    config = await call(client.get_runner_config, runner_id)
    assert config["runner_id"] == runner_id
    changed = await call(client.update_runner_config, runner_id, {"max_concurrent_jobs": 2})
    assert changed["success"] is True
    assert (await call(client.get_runner_config, runner_id))["configuration"]["max_concurrent_jobs"] == 2

    stopped = await call(client.stop_runner, runner_id, graceful=True, timeout=5, reason="maintenance")
    assert stopped["status"] == "stopped"
    started = await call(client.start_runner, runner_id)
    assert started["success"] is True
    restarted = await call(client.restart_runner, runner_id, graceful=False)
    assert restarted["status"] == "restarting"


async def test_cancel_a_held_job(client: RustCIClient) -> None:
    # No agent behind this runner: the coordinator holds the job as queued and cancels it itself.
    runner_id = (await call(client.register_runner, registration(port=free_port())))["runner_id"]
    job_id = (await call(client.submit_job, runner_id, HELLO))["job_id"]
    cancelled = await call(client.cancel_job, runner_id, job_id)
    assert cancelled["status"] == "cancelled"
    assert (await call(client.wait_for_job, runner_id, job_id, timeout=5))["status"] == "cancelled"


async def test_bulk_reports_per_runner(client: RustCIClient) -> None:
    ids = [(await call(client.register_runner, registration(tags=["bulk"])))["runner_id"] for _ in range(2)]
    result = await call(client.bulk, "delete", filters={"tags": ["bulk"]})
    assert result["affected_runners"] == 2
    assert sorted(item["runner_id"] for item in result["results"]) == sorted(ids)
    assert (await call(client.list_runners, tags="bulk"))["total_count"] == 0


# --- errors ------------------------------------------------------------------------------------------------


async def test_error_envelopes_become_typed_exceptions(client: RustCIClient) -> None:
    with pytest.raises(errors.RunnerNotFound) as not_found:
        await call(client.get_runner, "runner_missing")
    assert not_found.value.code == "RUNNER_NOT_FOUND" and not_found.value.status == 404
    assert not_found.value.details["runner_id"] == "runner_missing"

    runner_id = (await call(client.register_runner, registration(port=free_port())))["runner_id"]
    with pytest.raises(errors.JobNotFound):
        await call(client.get_job, runner_id, "job_missing")
    # Server-side validation (the query string is not checked by the client).
    with pytest.raises(errors.InvalidRequest):
        await call(client.list_runners, status="sleepy")

    await call(client.submit_job, runner_id, HELLO)  # held: nothing runs it
    with pytest.raises(errors.RunnerBusy) as busy:
        await call(client.delete_runner, runner_id)
    assert busy.value.status == 409
    assert (await call(client.delete_runner, runner_id, force=True))["success"] is True


async def test_wrong_or_missing_key_is_authentication_required(coordinator: CoordinatorHandle) -> None:
    for key in ("not-the-key", None):
        with RustCIClient(coordinator.url, api_key=key) as sdk, pytest.raises(errors.AuthenticationRequired):
            await call(sdk.list_runners)
        # The liveness probe needs no key.
        with RustCIClient(coordinator.url, api_key=key) as sdk:
            assert (await call(sdk.health))["status"] == "ok"


async def test_wait_for_job_gives_up_at_its_deadline(client: RustCIClient) -> None:
    runner_id = (await call(client.register_runner, registration(port=free_port())))["runner_id"]
    job_id = (await call(client.submit_job, runner_id, HELLO))["job_id"]
    with pytest.raises(JobWaitTimeout) as timed_out:
        await call(client.wait_for_job, runner_id, job_id, timeout=0.2)
    assert timed_out.value.job["status"] == "queued"


@pytest.mark.parametrize(
    ("method", "args", "field"),
    [
        ("submit_job", ("runner_x", {"name": "j", "steps": [{"name": "a"}]}), "steps[0].run"),
        ("submit_job", ("runner_x", {"name": "j", "steps": []}), "steps"),
        ("submit_job", ("runner_x", {**HELLO, "environment": {"1BAD": "x"}}), "environment.1BAD.[key]"),
        ("submit_job", ("runner_x", {**HELLO, "retries": 3}), "retries"),
        ("register_runner", ({**registration(), "type": "vm"},), "type"),
        ("register_runner", ({**registration(), "port": 0},), "port"),
        ("update_runner", ("runner_x", {"tags": ["bad tag"]}), "tags[0]"),
        ("update_runner_config", ("runner_x", {"max_concurrent_jobs": 0}), "max_concurrent_jobs"),
        ("bulk", ("explode", {}), "operation"),
    ],
)
async def test_bodies_are_validated_before_sending(method: str, args: tuple[Any, ...], field: str) -> None:
    # Nothing listens at this URL: only a client-side check can answer.
    with RustCIClient(f"http://127.0.0.1:{free_port()}", api_key=API_KEY) as sdk:
        with pytest.raises(errors.InvalidRequest) as invalid:
            await call(getattr(sdk, method), *args)
    assert invalid.value.details["field"] == field
    assert field in invalid.value.message


async def test_a_validated_body_is_sent_as_given(client: RustCIClient, coordinator: CoordinatorHandle) -> None:
    # Only the fields the caller set go out: an update that names one field changes only that field.
    runner_id = (await call(client.register_runner, registration(port=free_port(), tags=["keep"])))["runner_id"]
    await call(client.update_runner, runner_id, {"name": "only-the-name"})
    runner = await call(client.get_runner, runner_id)
    assert runner["name"] == "only-the-name"
    assert runner["tags"] == ["keep"]


def test_log_stream_parsing_keeps_log_events_only() -> None:
    from rustci.client import _log_events

    stream = [
        ": ping",
        "",
        "id: 1",
        "event: log",
        'data: {"message": "one",',
        'data:  "level": "info"}',
        "",
        "event: something-else",
        'data: {"message": "not a log entry"}',
        "",
        'data: {"message": "unnamed events are messages"}',
        "",
    ]
    assert list(_log_events(stream)) == [
        {"message": "one", "level": "info"},
        {"message": "unnamed events are messages"},
    ]


async def test_status_health_metrics_and_logs(client: RustCIClient, start_agent: StartAgent) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id

    status = await call(client.get_runner_status, runner_id)
    assert status["runner_id"] == runner_id
    assert status["status"] == "active"
    health = await call(client.get_runner_health, runner_id)
    assert health["runner_id"] == runner_id
    assert health["checks"]["connectivity"]["status"] == "pass"
    metrics = await call(client.get_runner_metrics, runner_id, period="1h", resolution="1m")
    assert metrics["runner_id"] == runner_id
    assert metrics["period"] == "1h" and metrics["resolution"] == "1m"

    job = {"name": "logged", "steps": [{"name": "say", "run": "echo sdk-log-marker"}]}
    job_id = (await call(client.submit_job, runner_id, job))["job_id"]
    assert (await call(client.wait_for_job, runner_id, job_id, timeout=30))["status"] == "completed"
    # A job's outcome is applied after the log entries it printed, so they are all stored by now.
    page = await call(client.get_runner_logs, runner_id, job_id=job_id, step="say")
    assert "sdk-log-marker" in [entry["message"] for entry in page["logs"]]

    def first_marker() -> dict[str, Any]:
        for entry in client.follow_runner_logs(runner_id, job_id=job_id, idle_timeout=30):
            if entry["message"] == "sdk-log-marker":
                return entry
        raise AssertionError("the stream ended without the marker")

    followed = await call(first_marker)
    assert followed["context"]["job_id"] == job_id


async def test_unknown_runner_has_no_logs_to_follow(client: RustCIClient) -> None:
    with pytest.raises(errors.RunnerNotFound):
        await call(lambda: next(client.follow_runner_logs("runner_missing", idle_timeout=5)))


async def test_bearer_tokens_and_their_roles(client: RustCIClient, coordinator: CoordinatorHandle) -> None:
    from coordinator import keys, tokens

    assert coordinator.app is not None
    secret = coordinator.app[keys.CREDENTIALS].jwt_secret
    runner_id = (await call(client.register_runner, registration(port=free_port())))["runner_id"]

    with RustCIClient(coordinator.url, token=tokens.issue(secret, "alice", "viewer", 60)) as viewer:
        assert (await call(viewer.get_runner, runner_id))["id"] == runner_id
        with pytest.raises(errors.AuthorizationFailed):
            await call(viewer.delete_runner, runner_id)
    with RustCIClient(coordinator.url, token=tokens.issue(secret, "root", "admin", 60)) as admin:
        assert (await call(admin.delete_runner, runner_id))["success"] is True
    with RustCIClient(coordinator.url, token=tokens.issue("another-secret-" * 3, "eve", "admin", 60)) as forged:
        with pytest.raises(errors.AuthenticationRequired):
            await call(forged.list_runners)


async def test_rate_limits_raise_their_typed_error(tmp_path: Path) -> None:
    config = coordinator_config(tmp_path / "limited", rate_limits={"enabled": True, "registration_per_minute": 1})
    async with running_coordinator(config) as limited:
        with RustCIClient(limited.url, api_key=API_KEY) as sdk:
            # Three at once: at least two share a one-minute window, so one of them is over the limit.
            with pytest.raises(errors.RateLimitExceeded) as limit:
                for _ in range(3):
                    await call(sdk.register_runner, registration(port=free_port()))
        assert limit.value.status == 429
