"""Every failure answers the spec's error envelope with the right code and status: validation, authentication,
authorization, unknown runners and jobs, unknown routes and methods. Never a 500, never a traceback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    API_KEY,
    REGISTRATION_KEY,
    CoordinatorHandle,
    StartAgent,
    coordinator_config,
    running_coordinator,
)
from tests.helpers import SilentChannel, assert_error, free_port, register_runner, registration, wait_for

JOB = {"name": "j", "steps": [{"name": "s", "run": "true"}]}
RAW = {"Content-Type": "application/json"}


def _without(key: str) -> dict[str, Any]:
    body = registration()
    del body[key]
    return body


# (method, path, request keyword arguments, the field error.details.field must name); "{rid}" is a real runner.
VALIDATION: dict[str, tuple[str, str, dict[str, Any], str | None]] = {
    # malformed bodies: no single field is at fault
    "malformed-json": ("POST", "/runners/register", {"data": b'{"name": ', "headers": RAW}, "body"),
    "not-utf8": ("POST", "/runners/register", {"data": b"\xff\xfe{}", "headers": RAW}, "body"),
    "deeply-nested": ("POST", "/runners/register", {"data": b"[" * 100_000, "headers": RAW}, "body"),
    "array-body": ("POST", "/runners/register", {"json": [registration()]}, "body"),
    "empty-body": ("POST", "/runners/register", {"data": b"", "headers": RAW}, "body"),
    "malformed-update": ("PUT", "/runners/{rid}", {"data": b"{,}", "headers": RAW}, "body"),
    "malformed-job": ("POST", "/runners/{rid}/jobs", {"data": b"name=j", "headers": RAW}, "body"),
    # wrong types
    "name-number": ("POST", "/runners/register", {"json": registration(name=123)}, "name"),
    "port-string": ("POST", "/runners/register", {"json": registration(port="8081")}, "port"),
    "port-bool": ("POST", "/runners/register", {"json": registration(port=True)}, "port"),
    "capabilities-string": ("POST", "/runners/register", {"json": registration(capabilities="docker")}, "capabilities"),
    "tag-number": ("POST", "/runners/register", {"json": registration(tags=["ok", 7])}, "tags[1]"),
    "metadata-list": ("POST", "/runners/register", {"json": registration(metadata=["os"])}, "metadata"),
    "resources-string": (
        "POST",
        "/runners/register",
        {"json": registration(resources={"cpu_cores": "many"})},
        "resources.cpu_cores",
    ),
    "update-tags-string": ("PUT", "/runners/{rid}", {"json": {"tags": "a,b"}}, "tags"),
    "job-timeout-string": ("POST", "/runners/{rid}/jobs", {"json": {**JOB, "timeout": "long"}}, "timeout"),
    "job-env-number": ("POST", "/runners/{rid}/jobs", {"json": {**JOB, "environment": {"A": 1}}}, "environment.A"),
    "job-steps-object": ("POST", "/runners/{rid}/jobs", {"json": {"name": "j", "steps": {"s": "true"}}}, "steps"),
    # unknown enum values
    "type-unknown": ("POST", "/runners/register", {"json": registration(type="podman")}, "type"),
    "status-filter": ("GET", "/runners?status=sleeping", {}, "status"),
    "type-filter": ("GET", "/runners?type=podman", {}, "type"),
    "job-status-filter": ("GET", "/runners/{rid}/jobs?status=done", {}, "status"),
    # missing required fields
    "missing-name": ("POST", "/runners/register", {"json": _without("name")}, "name"),
    "missing-type": ("POST", "/runners/register", {"json": _without("type")}, "type"),
    "missing-host": ("POST", "/runners/register", {"json": _without("host")}, "host"),
    "missing-port": ("POST", "/runners/register", {"json": _without("port")}, "port"),
    "job-missing-steps": ("POST", "/runners/{rid}/jobs", {"json": {"name": "j"}}, "steps"),
    "job-missing-run": (
        "POST",
        "/runners/{rid}/jobs",
        {"json": {"name": "j", "steps": [{"name": "s"}]}},
        "steps[0].run",
    ),
    "job-no-steps": ("POST", "/runners/{rid}/jobs", {"json": {"name": "j", "steps": []}}, "steps"),
    # unknown fields
    "unknown-field": ("POST", "/runners/register", {"json": registration(nmae="typo")}, "nmae"),
    "unknown-nested": (
        "POST",
        "/runners/register",
        {"json": registration(resources={"cpu_cores": 1, "gpus": 2})},
        "resources.gpus",
    ),
    "update-status": ("PUT", "/runners/{rid}", {"json": {"status": "inactive"}}, "status"),
    "job-typo": ("POST", "/runners/{rid}/jobs", {"json": {**JOB, "enviroment": {"A": "1"}}}, "enviroment"),
    "step-typo": (
        "POST",
        "/runners/{rid}/jobs",
        {"json": {"name": "j", "steps": [{"name": "s", "run": "true", "shell": "bash"}]}},
        "steps[0].shell",
    ),
    # limit and offset
    "limit-negative": ("GET", "/runners?limit=-1", {}, "limit"),
    "limit-zero": ("GET", "/runners?limit=0", {}, "limit"),
    "limit-oversized": ("GET", "/runners?limit=1001", {}, "limit"),
    "limit-huge": ("GET", "/runners?limit=99999999999999999999999", {}, "limit"),
    "limit-text": ("GET", "/runners?limit=ten", {}, "limit"),
    "offset-negative": ("GET", "/runners?offset=-1", {}, "offset"),
    "offset-fraction": ("GET", "/runners?offset=1.5", {}, "offset"),
    "offset-text": ("GET", "/runners?offset=abc", {}, "offset"),
    "jobs-limit-zero": ("GET", "/runners/{rid}/jobs?limit=0", {}, "limit"),
    "jobs-limit-oversized": ("GET", "/runners/{rid}/jobs?limit=100000", {}, "limit"),
    "jobs-offset-negative": ("GET", "/runners/{rid}/jobs?offset=-5", {}, "offset"),
    "jobs-offset-text": ("GET", "/runners/{rid}/jobs?offset=x", {}, "offset"),
    # port out of range
    "port-zero": ("POST", "/runners/register", {"json": registration(port=0)}, "port"),
    "port-negative": ("POST", "/runners/register", {"json": registration(port=-1)}, "port"),
    "port-too-big": ("POST", "/runners/register", {"json": registration(port=65536)}, "port"),
    "update-port-too-big": ("PUT", "/runners/{rid}", {"json": {"port": 70000}}, "port"),
}


@pytest.mark.parametrize("case", list(VALIDATION), ids=list(VALIDATION))
async def test_validation_errors_name_the_field(coordinator: CoordinatorHandle, case: str) -> None:
    method, path, kwargs, field = VALIDATION[case]
    runner = await register_runner(coordinator.api, name="target")
    status, body = await coordinator.api.request(method, path.replace("{rid}", runner["runner_id"]), **kwargs)
    error = assert_error(status, body, 400, "INVALID_REQUEST", field=field)
    assert "field" in error["details"]
    if field is not None:
        assert field in error["message"]
    # Nothing was created or changed by a refused request.
    _, listed = await coordinator.api.get("/runners")
    assert listed["total_count"] == 1
    _, after = await coordinator.api.get(f"/runners/{runner['runner_id']}")
    assert after["name"] == "target"
    assert after["status"] == "active"
    _, jobs = await coordinator.api.get(f"/runners/{runner['runner_id']}/jobs")
    assert jobs["total_count"] == 0


async def test_limit_and_offset_at_their_bounds_are_accepted(coordinator: CoordinatorHandle) -> None:
    for query in ("limit=1", "limit=1000", "offset=0", "limit=&offset="):
        status, body = await coordinator.api.get(f"/runners?{query}")
        assert status == 200, (query, body)


# --- authentication and authorization ----------------------------------------------------------------------


async def test_requests_without_a_key_or_with_a_wrong_key_are_authentication_required(
    coordinator: CoordinatorHandle,
) -> None:
    runner_id = (await register_runner(coordinator.api))["runner_id"]
    anonymous = coordinator.client(api_key=None)
    wrong = coordinator.client(api_key="not-the-key-0123456789")
    routes = [
        ("GET", "/runners", None),
        ("POST", "/runners/register", registration()),
        ("GET", f"/runners/{runner_id}", None),
        ("PUT", f"/runners/{runner_id}", {"name": "stolen"}),
        ("DELETE", f"/runners/{runner_id}", None),
        ("POST", f"/runners/{runner_id}/jobs", JOB),
        ("GET", f"/runners/{runner_id}/jobs", None),
    ]
    for client in (anonymous, wrong):
        for method, path, payload in routes:
            status, body = await client.request(method, path, json=payload)
            assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")
    status, body = await anonymous.get(
        f"/runners/{runner_id}", headers={"Authorization": "Bearer not-the-key-0123456789"}
    )
    assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")
    # nothing happened
    _, runner = await coordinator.api.get(f"/runners/{runner_id}")
    assert runner["name"] != "stolen"
    _, listed = await coordinator.api.get("/runners")
    assert listed["total_count"] == 1


async def test_the_admin_key_works_as_a_bearer_token(coordinator: CoordinatorHandle) -> None:
    anonymous = coordinator.client(api_key=None)
    status, body = await anonymous.get("/runners", headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 200, body


async def test_the_registration_key_may_only_register(coordinator: CoordinatorHandle) -> None:
    admin = coordinator.api
    runner_id = (await register_runner(admin))["runner_id"]
    registrar = coordinator.client(REGISTRATION_KEY)
    for method, path, payload in [
        ("GET", "/runners", None),
        ("GET", f"/runners/{runner_id}", None),
        ("PUT", f"/runners/{runner_id}", {"name": "renamed"}),
        ("DELETE", f"/runners/{runner_id}", None),
        ("POST", f"/runners/{runner_id}/jobs", JOB),
        ("GET", f"/runners/{runner_id}/jobs", None),
    ]:
        status, body = await registrar.request(method, path, json=payload)
        assert_error(status, body, 403, "AUTHORIZATION_FAILED")
    status, body = await registrar.post("/runners/register", registration())
    assert status == 201, body
    _, runner = await admin.get(f"/runners/{runner_id}")
    assert runner["name"] != "renamed"
    _, jobs = await admin.get(f"/runners/{runner_id}/jobs")
    assert jobs["total_count"] == 0


async def test_a_runner_token_works_on_its_own_runner(coordinator: CoordinatorHandle) -> None:
    mine = await register_runner(coordinator.api, name="mine")
    token = coordinator.client(mine["registration_token"])
    status, body = await token.get(f"/runners/{mine['runner_id']}")
    assert status == 200, body
    assert body["name"] == "mine"


async def test_a_runner_token_on_another_runners_route_is_authorization_failed(coordinator: CoordinatorHandle) -> None:
    mine = await register_runner(coordinator.api, name="mine")
    theirs = await register_runner(coordinator.api, name="theirs")
    token = coordinator.client(mine["registration_token"])
    for method, path, payload in [
        ("GET", f"/runners/{theirs['runner_id']}", None),
        ("PUT", f"/runners/{theirs['runner_id']}", {"name": "hijacked"}),
        ("DELETE", f"/runners/{theirs['runner_id']}", None),
        ("POST", f"/runners/{theirs['runner_id']}/jobs", JOB),
        ("GET", "/runners", None),
    ]:
        status, body = await token.request(method, path, json=payload)
        assert_error(status, body, 403, "AUTHORIZATION_FAILED")


async def test_a_runner_token_never_grants_another_runners_route(coordinator: CoordinatorHandle) -> None:
    """A foreign token changes nothing."""
    mine = await register_runner(coordinator.api, name="mine")
    theirs = await register_runner(coordinator.api, name="theirs")
    token = coordinator.client(mine["registration_token"])
    for method, path, payload in [
        ("PUT", f"/runners/{theirs['runner_id']}", {"name": "hijacked"}),
        ("DELETE", f"/runners/{theirs['runner_id']}", None),
        ("POST", f"/runners/{theirs['runner_id']}/jobs", JOB),
    ]:
        status, body = await token.request(method, path, json=payload)
        assert status in (401, 403), (method, path, status, body)
        assert body["success"] is False
    status, runner = await coordinator.api.get(f"/runners/{theirs['runner_id']}")
    assert status == 200 and runner["name"] == "theirs"
    _, jobs = await coordinator.api.get(f"/runners/{theirs['runner_id']}/jobs")
    assert jobs["total_count"] == 0


# --- not found ---------------------------------------------------------------------------------------------

MISSING_RUNNER = "runner_123e4567-e89b-42d3-a456-426614174000"


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("GET", f"/runners/{MISSING_RUNNER}", None),
        ("PUT", f"/runners/{MISSING_RUNNER}", {"name": "x"}),
        ("DELETE", f"/runners/{MISSING_RUNNER}", None),
        ("DELETE", f"/runners/{MISSING_RUNNER}?force=true", None),
        ("POST", f"/runners/{MISSING_RUNNER}/jobs", JOB),
        ("GET", f"/runners/{MISSING_RUNNER}/jobs", None),
        ("GET", f"/runners/{MISSING_RUNNER}/jobs/job_456e7890-e89b-42d3-a456-426614174000", None),
        ("GET", "/runners/runner_123", None),
    ],
)
async def test_unknown_runner_is_runner_not_found(
    coordinator: CoordinatorHandle, method: str, path: str, payload: Any
) -> None:
    status, body = await coordinator.api.request(method, path, json=payload)
    error = assert_error(status, body, 404, "RUNNER_NOT_FOUND")
    runner_id = path.split("/")[2].split("?")[0]
    assert error["details"]["runner_id"] == runner_id
    assert runner_id in error["message"]


async def test_unknown_job_is_job_not_found(coordinator: CoordinatorHandle) -> None:
    api = coordinator.api
    first = (await register_runner(api, name="first"))["runner_id"]
    second = (await register_runner(api, name="second"))["runner_id"]
    missing = "job_456e7890-e89b-42d3-a456-426614174000"
    status, body = await api.get(f"/runners/{first}/jobs/{missing}")
    assert_error(status, body, 404, "JOB_NOT_FOUND", job_id=missing, runner_id=first)
    # a job exists, but on another runner: not visible under this one
    status, submitted = await api.post(f"/runners/{first}/jobs", JOB)
    assert status == 201, submitted
    status, body = await api.get(f"/runners/{second}/jobs/{submitted['job_id']}")
    assert_error(status, body, 404, "JOB_NOT_FOUND", job_id=submitted["job_id"], runner_id=second)
    status, body = await api.get(f"/runners/{first}/jobs/{submitted['job_id']}")
    assert status == 200 and body["job_id"] == submitted["job_id"]


# --- unknown routes and wrong methods ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "status", "code"),
    [
        ("GET", "/api/nope", 404, "NOT_FOUND"),
        ("GET", "/nope", 404, "NOT_FOUND"),
        ("POST", "/api/runners/x/y/z", 404, "NOT_FOUND"),
        ("GET", "/api", 404, "NOT_FOUND"),
        ("PATCH", "/api/runners", 405, "METHOD_NOT_ALLOWED"),
        ("DELETE", "/api/runners", 405, "METHOD_NOT_ALLOWED"),
        ("POST", "/api/runners", 405, "METHOD_NOT_ALLOWED"),
        ("POST", f"/api/runners/{MISSING_RUNNER}", 405, "METHOD_NOT_ALLOWED"),
        ("PATCH", f"/api/runners/{MISSING_RUNNER}", 405, "METHOD_NOT_ALLOWED"),
        ("DELETE", f"/api/runners/{MISSING_RUNNER}/jobs", 405, "METHOD_NOT_ALLOWED"),
        ("PUT", f"/api/runners/{MISSING_RUNNER}/jobs/job_1", 405, "METHOD_NOT_ALLOWED"),
    ],
)
@pytest.mark.parametrize("key", [API_KEY, None], ids=["authenticated", "anonymous"])
async def test_unknown_routes_and_wrong_methods_answer_the_envelope(
    coordinator: CoordinatorHandle, method: str, url: str, status: int, code: str, key: str | None
) -> None:
    headers = {"X-API-Key": key} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, coordinator.url + url, headers=headers) as response,
    ):
        text = await response.text()
        assert response.content_type == "application/json"
        real_status = response.status
    body = json.loads(text)
    error = assert_error(real_status, body, status, code)
    assert error["details"]["path"] == url
    if status == 405:
        assert method not in error["details"]["allowed_methods"]
        assert error["details"]["allowed_methods"]


async def test_hostile_bodies_never_cause_a_500(coordinator: CoordinatorHandle) -> None:
    api = coordinator.api
    runner_id = (await register_runner(api))["runner_id"]
    bodies = [
        b"null",
        b"0",
        b'"text"',
        b"[]",
        b"{}",
        b"{" * 50_000,
        b'{"a": ' * 20_000,
        b'{"name": "\\ud800"}',
        b'{"name": "x", "port": 1e999}',
        b"\x00" * 64,
        json.dumps(registration(metadata={f"k{n}": n for n in range(1000)})).encode(),
        json.dumps(registration(name="x" * 10_000)).encode(),
        json.dumps(registration(tags=["t"] * 1000)).encode(),
    ]
    for path in ("/runners/register", f"/runners/{runner_id}", f"/runners/{runner_id}/jobs"):
        method = "PUT" if path == f"/runners/{runner_id}" else "POST"
        for raw in bodies:
            status, body = await api.request(method, path, data=raw, headers=RAW)
            assert status < 500, (path, raw[:40], status, body)
            assert "Traceback" not in json.dumps(body)
            if status >= 400:
                assert body["success"] is False and body["error"]["code"], body


# --- an agent that does not answer ----------------------------------------------------------------------------

AGENT_TIMEOUT = 0.5


@pytest.fixture
async def impatient_coordinator(tmp_path: Path) -> AsyncIterator[CoordinatorHandle]:
    """A coordinator that gives agents ``AGENT_TIMEOUT`` seconds to answer."""
    async with running_coordinator(
        coordinator_config(
            tmp_path / "impatient", agents={"request_timeout": AGENT_TIMEOUT, "connect_timeout": AGENT_TIMEOUT / 2}
        )
    ) as handle:
        yield handle


async def test_an_agent_that_does_not_answer_is_runner_unavailable_within_the_timeout(
    impatient_coordinator: CoordinatorHandle,
) -> None:
    api = impatient_coordinator.api
    runner = await register_runner(api)
    runner_id = runner["runner_id"]
    async with SilentChannel(impatient_coordinator.url, runner_id, runner["registration_token"]) as channel:
        started = time.monotonic()
        async with asyncio.timeout(AGENT_TIMEOUT + 5):  # fail here, not at the suite's timeout, if it hangs
            status, body = await api.get(f"/runners/{runner_id}/config")
        elapsed = time.monotonic() - started
        assert channel.kinds() == ["config_get"], "the call never reached the agent's channel"
    error = assert_error(status, body, 503, "RUNNER_UNAVAILABLE", runner_id=runner_id)
    assert AGENT_TIMEOUT * 0.8 <= elapsed < AGENT_TIMEOUT + 1.0, elapsed
    assert runner_id in error["message"]
    # the coordinator itself stays responsive and the runner is still known
    status, _ = await api.get(f"/runners/{runner_id}")
    assert status == 200


async def test_delivering_a_job_to_a_silent_agent_gives_up_and_holds_the_job(
    impatient_coordinator: CoordinatorHandle,
) -> None:
    api = impatient_coordinator.api
    runner = await register_runner(api)
    runner_id = runner["runner_id"]
    async with SilentChannel(impatient_coordinator.url, runner_id, runner["registration_token"]) as channel:
        status, body = await api.post(f"/runners/{runner_id}/jobs", JOB)
        assert status == 201, body
        await wait_for(lambda: _count(channel.kinds(), "job", 1), AGENT_TIMEOUT + 3, what="the job to be pushed")
        # Held, not lost: after giving up, a heartbeat (a cue to deliver) makes the coordinator push it again.

        async def pushed_again() -> bool:
            await channel.heartbeat()
            return channel.kinds().count("job") >= 2

        await wait_for(pushed_again, AGENT_TIMEOUT + 3, interval=0.1, what="the held job to be pushed again")
        jobs = [frame for frame in channel.frames if frame["kind"] == "job"]
        assert len(jobs) >= 2 and jobs[0]["body"]["job_id"] == jobs[1]["body"]["job_id"] == body["job_id"]
    assert (await api.job(runner_id, body["job_id"]))["status"] == "queued"
    status, busy = await api.delete(f"/runners/{runner_id}")
    assert_error(status, busy, 409, "RUNNER_BUSY")


async def test_an_agent_that_is_not_connected_is_runner_unavailable_at_once(
    impatient_coordinator: CoordinatorHandle,
) -> None:
    api = impatient_coordinator.api
    runner_id = (await register_runner(api, host="127.0.0.1", port=free_port()))["runner_id"]
    started = time.monotonic()
    status, body = await api.get(f"/runners/{runner_id}/config")
    elapsed = time.monotonic() - started
    assert_error(status, body, 503, "RUNNER_UNAVAILABLE", runner_id=runner_id)
    assert elapsed < AGENT_TIMEOUT, elapsed


async def _count(items: list[str], item: str, at_least: int) -> bool:
    return items.count(item) >= at_least


async def test_a_live_agent_answers_its_configuration(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    """The same route with a real agent behind it: not an error, so the 503 above is about reachability."""
    agent = await start_agent(max_concurrent_jobs=3)
    runner_id = agent.identity().runner_id
    status, body = await coordinator.api.get(f"/runners/{runner_id}/config")
    assert status == 200, body
    assert body["runner_id"] == runner_id
    assert body["configuration"]["max_concurrent_jobs"] == 3
