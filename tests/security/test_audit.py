"""The audit trail (who, from where, what, outcome; admins only) and the client address behind a proxy."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from coordinator import keys
from coordinator.auth import key_hash
from coordinator.client_address import TrustedProxies
from tests.conftest import REGISTRATION_KEY, CoordinatorHandle, coordinator_config, running_coordinator
from tests.helpers import assert_error, register_runner, submit_job

OPERATOR_KEY = "operator-key-for-the-audit-0123456789"


@pytest.fixture
async def coord(tmp_path: Path) -> AsyncIterator[CoordinatorHandle]:
    config = coordinator_config(
        tmp_path / "coordinator",
        auth={"keys": [{"name": "ops", "role": "operator", "hash": key_hash(OPERATOR_KEY)}]},
        trusted_proxies=["127.0.0.1/32"],
    )
    async with running_coordinator(config) as handle:
        yield handle


async def _trail(coord: CoordinatorHandle, **query: Any) -> dict[str, Any]:
    params = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = await coord.api.get(f"/audit?{params}")
    assert status == 200, body
    return dict(body)


async def test_state_changes_are_recorded_with_who_where_what_and_outcome(coord: CoordinatorHandle) -> None:
    operator = coord.client(OPERATOR_KEY)
    runner = await register_runner(operator, name="audited")
    rid = runner["runner_id"]
    job_id = await submit_job(operator, rid, "j", "true")
    status, _ = await operator.post(f"/runners/{rid}/jobs/{job_id}/cancel")
    assert status == 200
    status, _ = await operator.delete(f"/runners/{rid}")  # refused: operators do not delete
    assert status == 403
    await coord.client(runner["registration_token"]).post(f"/runners/{rid}/announce", {"port": 9001})
    await coord.client(runner["registration_token"]).post(f"/runners/{rid}/heartbeat", {})

    entries = (await _trail(coord, principal="key:ops"))["entries"]
    actions = [(e["action"], e["outcome"], e["status"]) for e in reversed(entries)]
    assert actions == [
        ("credential.first_use", "success", 200),
        ("runner.register", "success", 201),
        ("job.submit", "success", 201),
        ("job.cancel", "success", 200),
        ("runner.delete", "refused", 403),
    ]
    register = next(e for e in entries if e["action"] == "runner.register")
    assert register["detail"] == f"runner_id={rid}" and register["role"] == "operator"
    assert register["client"] == "127.0.0.1"
    submit = next(e for e in entries if e["action"] == "job.submit")
    assert submit["runner_id"] == rid and submit["detail"] == f"job_id={job_id}"
    cancel = next(e for e in entries if e["action"] == "job.cancel")
    assert cancel["job_id"] == job_id and cancel["path"] == f"/api/runners/{rid}/jobs/{job_id}/cancel"
    # The runner's own announce is recorded under the runner; its heartbeats are not.
    by_runner = (await _trail(coord, principal=f"runner:{rid}"))["entries"]
    assert [e["action"] for e in by_runner] == ["runner.announce"]


async def test_refused_and_anonymous_attempts_are_recorded(coord: CoordinatorHandle) -> None:
    status, _ = await coord.client("not-a-key-0123456789abcdef").post("/runners/register", {})
    assert status == 401
    entries = (await _trail(coord, principal="anonymous"))["entries"]
    assert [(e["action"], e["outcome"], e["status"]) for e in entries] == [("runner.register", "refused", 401)]


async def test_only_admins_read_the_trail_and_the_filters_work(coord: CoordinatorHandle) -> None:
    status, body = await coord.client(OPERATOR_KEY).get("/audit")
    assert_error(status, body, 403, "AUTHORIZATION_FAILED")
    for i in range(3):
        await register_runner(coord.api, name=f"r{i}")
    everything = await _trail(coord)
    assert everything["total_count"] >= 4  # admin's first use and three registrations
    page = await _trail(coord, limit=2, offset=1)
    assert [e["id"] for e in page["entries"]] == [e["id"] for e in everything["entries"][1:3]]
    assert page["has_more"] is True
    newest = everything["entries"][0]["timestamp"]
    assert (await _trail(coord, since=newest))["entries"][0]["id"] == everything["entries"][0]["id"]
    assert (await _trail(coord, until="2000-01-01T00:00:00Z"))["total_count"] == 0
    status, body = await coord.api.get("/audit?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z")
    assert_error(status, body, 400, "INVALID_REQUEST", field="since")
    status, body = await coord.api.get("/audit?since=yesterday")
    assert_error(status, body, 400, "INVALID_REQUEST", field="since")


async def test_the_trail_survives_a_restart_and_first_use_is_recorded_once(coord: CoordinatorHandle) -> None:
    await coord.client(OPERATOR_KEY).get("/runners")
    await coord.restart()
    await coord.client(OPERATOR_KEY).get("/runners")
    entries = (await _trail(coord, principal="key:ops"))["entries"]
    assert [e["action"] for e in entries] == ["credential.first_use"]


async def test_x_forwarded_for_from_a_trusted_proxy_is_the_client(tmp_path: Path) -> None:
    """The test's peer is 127.0.0.1, trusted here: each forwarded client gets its own registration budget."""
    config = coordinator_config(
        tmp_path / "c",
        trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"],
        rate_limits={"enabled": True, "registration_per_minute": 2},
    )
    async with running_coordinator(config) as coord:
        agent = coord.client(REGISTRATION_KEY)
        body = {"name": "x", "type": "native", "host": "127.0.0.1", "port": 9}
        for client in ("203.0.113.7", "203.0.113.8"):
            for _ in range(2):
                forwarded = {"X-Forwarded-For": f"{client}, 10.0.0.1"}
                status, _ = await agent.post("/runners/register", body, headers=forwarded)
                assert status == 201
            status, refused = await agent.post("/runners/register", body, headers={"X-Forwarded-For": client})
            assert_error(status, refused, 429, "RATE_LIMIT_EXCEEDED")
        entries = (await _trail(coord, principal="key:registration"))["entries"]
        assert {e["client"] for e in entries if e["action"] == "runner.register"} == {"203.0.113.7", "203.0.113.8"}


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    config = coordinator_config(
        tmp_path / "c", trusted_proxies=["10.0.0.0/8"], rate_limits={"enabled": True, "registration_per_minute": 2}
    )
    async with running_coordinator(config) as coord:
        agent = coord.client(REGISTRATION_KEY)
        body = {"name": "x", "type": "native", "host": "127.0.0.1", "port": 9}
        statuses = []
        for i in range(3):  # a fresh forged address each time does not buy a fresh budget
            status, _ = await agent.post("/runners/register", body, headers={"X-Forwarded-For": f"198.51.100.{i}"})
            statuses.append(status)
        assert statuses == [201, 201, 429]
        entries = (await _trail(coord, principal="key:registration"))["entries"]
        assert {e["client"] for e in entries} == {"127.0.0.1"}


def test_the_client_address_rules() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "::1"])
    assert proxies.client("192.0.2.1", ["203.0.113.9"]) == "192.0.2.1"  # untrusted peer
    assert proxies.client("10.1.1.1", ["203.0.113.9, 10.2.2.2"]) == "203.0.113.9"  # past the trusted hops
    assert proxies.client("10.1.1.1", ["198.51.100.1, 203.0.113.9"]) == "203.0.113.9"  # the rightmost untrusted
    assert proxies.client("10.1.1.1", ["10.3.3.3"]) == "10.3.3.3"  # all trusted: the leftmost
    assert proxies.client("10.1.1.1", ["garbage"]) == "10.1.1.1"
    assert proxies.client("10.1.1.1", []) == "10.1.1.1"
    assert proxies.client("::1", ["2001:db8::1"]) == "2001:db8::1"
    assert TrustedProxies([]).client("10.1.1.1", ["203.0.113.9"]) == "10.1.1.1"


async def test_entries_past_the_retention_are_deleted(coord: CoordinatorHandle) -> None:
    assert coord.app is not None
    trail = coord.app[keys.AUDIT]
    await register_runner(coord.api)
    before = (await _trail(coord))["total_count"]
    assert before >= 2
    assert await trail.prune(now=time.time() + 364 * 86400) == 0
    assert await trail.prune(now=time.time() + 366 * 86400) == before
    assert (await _trail(coord))["total_count"] == 0
