"""The role matrix: every route of the URL table by every kind of credential, against the rules as the docs state
them (written out here independently of ``coordinator.access``), plus named keys, ``key create`` and non-ASCII
credentials on both daemons."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from coordinator import tokens
from coordinator.auth import key_hash
from tests.conftest import (
    API_KEY,
    REGISTRATION_KEY,
    CoordinatorHandle,
    StartAgent,
    coordinator_config,
    running_coordinator,
)
from tests.helpers import REPO, Api, assert_error, register_runner

KEYS = {role: f"{role}-named-key-0123456789abcdef" for role in ("admin", "operator", "viewer", "registrar")}

R = "/api/runners/{runner_id}"
USERS = {"admin", "operator", "viewer"}
WRITERS = {"admin", "operator"}
ALL_CREDENTIALS = {"admin", "operator", "viewer", "registrar", "own-runner", "other-runner"}
# Who may call what, as docs/security.md states it. "own-runner": the runner token of the runner in the path;
# "other-runner": another runner's token.
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("GET", "/api/health"): ALL_CREDENTIALS,
    ("GET", "/api/openapi.json"): ALL_CREDENTIALS,
    ("GET", "/metrics"): ALL_CREDENTIALS,
    ("POST", "/api/runners/register"): {"admin", "operator", "registrar"},
    ("GET", "/api/runners/ws"): USERS,
    ("POST", "/api/runners/bulk"): WRITERS,
    ("GET", "/api/runners"): USERS,
    ("GET", R): USERS | {"own-runner"},
    ("PUT", R): WRITERS,
    ("DELETE", R): {"admin"},
    ("GET", f"{R}/status"): USERS,
    ("GET", f"{R}/health"): USERS,
    ("GET", f"{R}/metrics"): USERS,
    ("POST", f"{R}/jobs"): WRITERS,
    ("GET", f"{R}/jobs"): USERS,
    ("GET", f"{R}/jobs/{{job_id}}"): USERS,
    ("POST", f"{R}/jobs/{{job_id}}/cancel"): WRITERS,
    ("GET", f"{R}/config"): USERS,
    ("PUT", f"{R}/config"): WRITERS,
    ("POST", f"{R}/start"): WRITERS,
    ("POST", f"{R}/stop"): WRITERS,
    ("POST", f"{R}/restart"): WRITERS,
    ("GET", f"{R}/logs"): USERS,
    ("POST", f"{R}/heartbeat"): WRITERS | {"own-runner"},
    ("POST", f"{R}/events"): WRITERS | {"own-runner"},
    ("POST", f"{R}/announce"): WRITERS | {"own-runner"},
    ("GET", f"{R}/channel"): WRITERS | {"own-runner"},
    ("POST", "/api/jobs"): WRITERS,
    ("GET", "/api/jobs"): USERS,
    ("GET", "/api/jobs/{job_id}"): USERS,
    ("POST", "/api/jobs/{job_id}/cancel"): WRITERS,
    ("POST", "/api/tickets"): USERS,
    ("GET", "/api/whoami"): USERS,
    ("GET", "/api/audit"): {"admin"},
    # The dashboard: its page and files are public, its sign-in is for people (not registrars or runners).
    ("GET", "/"): ALL_CREDENTIALS,
    ("GET", "/dashboard/{name}"): ALL_CREDENTIALS,
    ("POST", "/api/session"): USERS,
    ("DELETE", "/api/session"): USERS,
}
NO_JOB = "job_00000000-0000-4000-8000-000000000000"
PUBLIC = {route for route, who in EXPECTED.items() if who == ALL_CREDENTIALS}


@pytest.fixture
async def coord(tmp_path: Path) -> AsyncIterator[CoordinatorHandle]:
    keys = [{"name": f"{role}-bot", "role": role, "hash": key_hash(key)} for role, key in KEYS.items()]
    config = coordinator_config(tmp_path / "coordinator", auth={"keys": keys})
    async with running_coordinator(config) as handle:
        yield handle


def _routes(app: web.Application) -> list[tuple[str, str]]:
    found = []
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        found.append((route.method, route.resource.canonical))
    return sorted(set(found))


async def _credentials(coord: CoordinatorHandle, own_token: str, other_token: str) -> dict[str, list[dict[str, str]]]:
    """Each credential kind, in every form it comes in: the spec's admin key, named keys, JWTs, runner tokens."""
    secret = (coord.config.state_dir / "jwt-secret").read_text().strip()

    def bearer(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.issue(secret, f'{role}-person', role, 300)}"}  # type: ignore[arg-type]

    return {
        "admin": [{"X-API-Key": API_KEY}, {"X-API-Key": KEYS["admin"]}, bearer("admin")],
        "operator": [{"X-API-Key": KEYS["operator"]}, bearer("operator")],
        "viewer": [{"X-API-Key": KEYS["viewer"]}, bearer("viewer")],
        "registrar": [{"X-API-Key": REGISTRATION_KEY}, {"X-API-Key": KEYS["registrar"]}, bearer("registrar")],
        "own-runner": [{"Authorization": f"Bearer {own_token}"}, {"X-API-Key": own_token}],
        "other-runner": [{"Authorization": f"Bearer {other_token}"}],
    }


async def test_every_route_for_every_credential(coord: CoordinatorHandle) -> None:
    assert coord.app is not None
    served = _routes(coord.app)
    unlisted = [route for route in served if route not in EXPECTED]
    assert not unlisted, f"routes without an expected policy in this test: {unlisted}"
    own = await register_runner(coord.api, name="own")
    other = await register_runner(coord.api, name="other")
    credentials = await _credentials(coord, own["registration_token"], other["registration_token"])
    client = coord.client(None)
    checked = 0
    for method, route in served:
        for kind, forms in credentials.items():
            for headers in forms:
                runner_id = own["runner_id"]
                if method == "DELETE" and kind != "own-runner":
                    runner_id = (await register_runner(coord.api, name="doomed"))["runner_id"]
                path = route.format(runner_id=runner_id, job_id=NO_JOB, name="app.js")
                status, body = (
                    await client.request(method, path.removeprefix("/api"), headers=headers)
                    if path.startswith("/api")
                    else await _raw(coord, method, path, headers)
                )
                allowed = kind in EXPECTED[(method, route)]
                where = f"{method} {route} as {kind} ({sorted(headers)[0]})"
                if allowed:
                    assert status not in (401, 403), (where, status, body)
                else:
                    assert status == 403, (where, status, body)
                    assert body["error"]["code"] == "AUTHORIZATION_FAILED", (where, body)
                checked += 1
    assert checked > 200
    # Nothing the refused calls tried happened: both runners are still there.
    for runner in (own, other):
        assert (await coord.api.get(f"/runners/{runner['runner_id']}"))[0] == 200


async def test_without_a_credential_only_the_public_routes_answer(coord: CoordinatorHandle) -> None:
    assert coord.app is not None
    runner_id = (await register_runner(coord.api))["runner_id"]
    anonymous = coord.client(None)
    for method, route in _routes(coord.app):
        path = route.format(runner_id=runner_id, job_id=NO_JOB, name="app.js")
        status, body = (
            await anonymous.request(method, path.removeprefix("/api"))
            if path.startswith("/api")
            else await _raw(coord, method, path, {})
        )
        if (method, route) in PUBLIC:
            assert status == 200, (method, route, status)
        else:
            assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")


async def _raw(coord: CoordinatorHandle, method: str, path: str, headers: dict[str, str]) -> tuple[int, object]:
    async with coord.api.session.request(method, coord.url + path, headers=headers) as response:
        return response.status, await response.text()


async def test_bulk_delete_needs_the_admin_role(coord: CoordinatorHandle) -> None:
    await register_runner(coord.api, name="kept")
    operator = coord.client(KEYS["operator"])
    status, body = await operator.post("/runners/bulk", {"operation": "delete", "filters": {}})
    assert_error(status, body, 403, "AUTHORIZATION_FAILED")
    assert (await coord.api.get("/runners"))[1]["total_count"] == 1
    status, body = await operator.post("/runners/bulk", {"operation": "start", "filters": {"tags": ["none"]}})
    assert status == 200, body
    status, body = await coord.client(KEYS["admin"]).post("/runners/bulk", {"operation": "delete", "filters": {}})
    assert status == 200 and body["affected_runners"] == 1, body


async def test_a_runner_token_cannot_change_or_remove_its_runner(coord: CoordinatorHandle) -> None:
    runner = await register_runner(coord.api, name="mine", host="10.0.0.1")
    agent = coord.client(runner["registration_token"])
    rid = runner["runner_id"]
    attempts = [
        ("DELETE", f"/runners/{rid}", None),
        ("POST", f"/runners/{rid}/jobs", {"name": "x", "steps": [{"name": "s", "run": "true"}]}),
        ("PUT", f"/runners/{rid}/config", {"max_concurrent_jobs": 9}),
        ("POST", f"/runners/{rid}/stop", None),
        ("POST", f"/runners/{rid}/start", None),
        ("PUT", f"/runners/{rid}", {"host": "evil.example"}),
    ]
    for method, path, body in attempts:
        status, answer = await agent.request(method, path, json=body)
        assert_error(status, answer, 403, "AUTHORIZATION_FAILED")
    status, view = await agent.get(f"/runners/{rid}")
    assert status == 200 and view["host"] == "10.0.0.1"
    _, jobs = await coord.api.get(f"/runners/{rid}/jobs")
    assert jobs["total_count"] == 0
    # What the agent may do: announce its own host and port.
    status, answer = await agent.post(f"/runners/{rid}/announce", {"host": "10.0.0.2", "port": 9000})
    assert status == 200, answer
    assert (await coord.api.get(f"/runners/{rid}"))[1]["host"] == "10.0.0.2"


def test_key_create_prints_the_key_once_and_an_entry_the_coordinator_accepts(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", "key", "create", "--name", "ci-bot", "--role", "operator"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "RUSTCI_STATE_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = next(line.strip() for line in done.stdout.splitlines() if line.strip().startswith("rk_"))
    assert done.stdout.count(key) == 1
    config_text = done.stdout[done.stdout.index("auth:") :]
    config_file = tmp_path / "coordinator.yaml"
    config_file.write_text(config_text, encoding="utf-8")
    from coordinator import config as config_module

    loaded = config_module.load(config_file)
    assert [(k.name, k.role, k.hash) for k in loaded.auth.keys] == [("ci-bot", "operator", key_hash(key))]
    refused = subprocess.run(
        [sys.executable, "-m", "coordinator", "key", "create", "--name", "bad name", "--role", "viewer"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--name" in refused.stderr and "rk_" not in refused.stdout


async def test_a_named_key_acts_with_its_role(coord: CoordinatorHandle) -> None:
    viewer = coord.client(KEYS["viewer"])
    assert (await viewer.get("/runners"))[0] == 200
    status, body = await viewer.post("/runners/register", {"name": "x", "type": "native", "host": "h", "port": 1})
    error = assert_error(status, body, 403, "AUTHORIZATION_FAILED", role="viewer")
    assert "viewer" in error["message"]
    operator = coord.client(KEYS["operator"])
    runner = await register_runner(operator)
    status, body = await operator.delete(f"/runners/{runner['runner_id']}")
    assert_error(status, body, 403, "AUTHORIZATION_FAILED", role="operator")


async def _raw_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "header",
    [
        b"X-API-Key: \xc3\xa9",
        b"X-API-Key: test-admin-key-0123456789abcde\xc3\xa9",
        b"Authorization: Bearer \xc3\xa9t\xff",
        b"Authorization: Bearer reg_token_\xc3\xa9\xff",
        b"Authorization: Bearer eyJ\xc3\xa9.e30.\xff",
    ],
)
async def test_a_non_ascii_credential_is_a_401_and_the_agent_takes_none(
    coordinator: CoordinatorHandle, start_agent: StartAgent, header: bytes
) -> None:
    agent = await start_agent()
    identity = agent.identity()
    # The public API and the agents' channel route both compare credentials as bytes.
    for path in (b"/api/runners", f"/api/runners/{identity.runner_id}/channel".encode()):
        answer = await _raw_request(
            coordinator.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b'"AUTHENTICATION_REQUIRED"' in answer and b"Traceback" not in answer
    # The agent serves no authenticated route (the coordinator reaches it over its channel): the same bytes on
    # its health probe are ignored, not a crash.
    answer = await _raw_request(
        agent.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


__all__ = ["Api"]
