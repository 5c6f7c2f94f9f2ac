"""The runner registry through the public API: register, list, get, update, delete, filters, pagination."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import REGISTRATION_KEY, CoordinatorHandle
from tests.helpers import (
    ISO_UTC_PATTERN,
    RUNNER_ID_PATTERN,
    Api,
    assert_error,
    free_port,
    register_runner,
    registration,
    wait_for,
)


def _parse_z(text: str) -> datetime:
    assert re.match(ISO_UTC_PATTERN, text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _recent(text: str) -> bool:
    moment = _parse_z(text)
    return abs(datetime.now(UTC) - moment) < timedelta(seconds=60)


# --- register --------------------------------------------------------------------------------------------------


async def test_register_answers_the_spec_fields(coordinator: CoordinatorHandle) -> None:
    status, body = await coordinator.api.post("/runners/register", registration())
    assert status == 201, body
    assert set(body) == {"success", "runner_id", "registration_token", "message"}
    assert body["success"] is True
    assert re.match(RUNNER_ID_PATTERN, body["runner_id"]), body["runner_id"]
    assert isinstance(body["registration_token"], str) and len(body["registration_token"]) >= 16
    assert body["message"] == "Runner registered successfully"


async def test_registration_key_may_register_and_each_runner_gets_its_own_id_and_token(
    coordinator: CoordinatorHandle,
) -> None:
    admin = coordinator.api  # created first: ``coordinator.api`` is the first client made
    registrar = coordinator.client(REGISTRATION_KEY)
    first = await register_runner(registrar, name="one")
    second = await register_runner(registrar, name="two")
    assert first["runner_id"] != second["runner_id"]
    assert first["registration_token"] != second["registration_token"]
    status, listed = await admin.get("/runners")
    assert status == 200
    assert [r["name"] for r in listed["runners"]] == ["one", "two"]


# --- list and get ----------------------------------------------------------------------------------------------


async def test_list_shows_each_runner_with_the_spec_fields(coordinator: CoordinatorHandle) -> None:
    sent = registration()
    registered = await register_runner(coordinator.api, **sent)
    status, body = await coordinator.api.get("/runners")
    assert status == 200, body
    assert body["total_count"] == 1
    assert body["has_more"] is False
    [runner] = body["runners"]
    assert runner["id"] == registered["runner_id"]
    assert runner["name"] == sent["name"]
    assert runner["type"] == "docker"
    assert runner["status"] == "active"
    assert runner["host"] == "localhost"
    assert runner["port"] == sent["port"]
    assert runner["capabilities"] == sent["capabilities"]
    for key, value in sent["metadata"].items():
        assert runner["metadata"][key] == value
    assert _recent(runner["metadata"]["last_seen"])
    assert runner["resources"] == {"cpu_cores": 4, "memory_gb": 8, "disk_gb": 100}
    load = runner["current_load"]
    assert load["active_jobs"] == 0
    assert isinstance(load["cpu_usage"], int | float)
    assert isinstance(load["memory_usage"], int | float)
    assert "registration_token" not in json.dumps(body)
    assert registered["registration_token"] not in json.dumps(body)


async def test_get_shows_the_details_and_zero_statistics_for_a_new_runner(coordinator: CoordinatorHandle) -> None:
    sent = registration(name="docker-runner-1")
    runner_id = (await register_runner(coordinator.api, **sent))["runner_id"]
    status, runner = await coordinator.api.get(f"/runners/{runner_id}")
    assert status == 200, runner
    assert runner["id"] == runner_id
    assert runner["name"] == "docker-runner-1"
    assert runner["type"] == "docker"
    assert runner["status"] == "active"
    assert runner["host"] == "localhost"
    assert runner["port"] == sent["port"]
    assert runner["capabilities"] == ["docker", "isolation", "deployment"]
    assert runner["metadata"]["os"] == "linux"
    assert runner["metadata"]["docker_version"] == "24.0.0"
    registered_at = _parse_z(runner["metadata"]["registered_at"])
    last_seen = _parse_z(runner["metadata"]["last_seen"])
    assert _recent(runner["metadata"]["registered_at"])
    assert last_seen >= registered_at
    assert runner["resources"] == {"cpu_cores": 4, "memory_gb": 8, "disk_gb": 100}
    assert set(runner["current_load"]) >= {"active_jobs", "cpu_usage", "memory_usage", "disk_usage"}
    assert runner["current_load"]["active_jobs"] == 0
    assert runner["statistics"] == {
        "total_jobs_executed": 0,
        "successful_jobs": 0,
        "failed_jobs": 0,
        "average_execution_time": 0,
        "uptime_percentage": 0,
    }


async def test_get_of_an_unknown_runner_is_runner_not_found(coordinator: CoordinatorHandle) -> None:
    missing = "runner_123e4567-e89b-42d3-a456-426614174000"
    status, body = await coordinator.api.get(f"/runners/{missing}")
    assert_error(status, body, 404, "RUNNER_NOT_FOUND", runner_id=missing)
    assert missing in body["error"]["message"]


# --- update ----------------------------------------------------------------------------------------------------


async def test_update_changes_the_given_fields_and_merges_metadata(coordinator: CoordinatorHandle) -> None:
    sent = registration()
    runner_id = (await register_runner(coordinator.api, **sent))["runner_id"]
    _, before = await coordinator.api.get(f"/runners/{runner_id}")
    status, body = await coordinator.api.put(
        f"/runners/{runner_id}",
        {
            "name": "updated-docker-runner",
            "capabilities": ["docker", "isolation", "deployment", "gpu"],
            "metadata": {"max_concurrent_jobs": 10, "updated_at": "2024-01-15T11:00:00Z"},
            "tags": ["production", "high-capacity"],
        },
    )
    assert status == 200, body
    assert body == {"success": True, "message": "Runner updated successfully"}
    _, after = await coordinator.api.get(f"/runners/{runner_id}")
    assert after["name"] == "updated-docker-runner"
    assert after["capabilities"] == ["docker", "isolation", "deployment", "gpu"]
    assert after["tags"] == ["production", "high-capacity"]
    # merged: new keys added, given keys replaced, the others kept
    assert after["metadata"]["max_concurrent_jobs"] == 10
    assert after["metadata"]["updated_at"] == "2024-01-15T11:00:00Z"
    assert after["metadata"]["os"] == "linux"
    assert after["metadata"]["arch"] == "amd64"
    assert after["metadata"]["docker_version"] == "24.0.0"
    assert after["metadata"]["registered_at"] == before["metadata"]["registered_at"]
    # untouched fields stay
    assert (after["id"], after["type"], after["host"], after["port"]) == (
        runner_id,
        "docker",
        "localhost",
        sent["port"],
    )
    assert after["resources"] == before["resources"]
    # the new tags are what the filter sees
    _, by_tag = await coordinator.api.get("/runners?tags=high-capacity")
    assert [r["id"] for r in by_tag["runners"]] == [runner_id]


async def test_partial_update_leaves_the_other_fields_alone(coordinator: CoordinatorHandle) -> None:
    sent = registration()
    runner_id = (await register_runner(coordinator.api, **sent))["runner_id"]
    status, _ = await coordinator.api.put(f"/runners/{runner_id}", {"name": "renamed"})
    assert status == 200
    _, after = await coordinator.api.get(f"/runners/{runner_id}")
    assert after["name"] == "renamed"
    assert after["capabilities"] == sent["capabilities"]
    assert after["tags"] == sent["tags"]
    assert after["metadata"]["max_concurrent_jobs"] == 5


async def test_update_of_an_unknown_runner_is_runner_not_found(coordinator: CoordinatorHandle) -> None:
    missing = "runner_00000000-0000-4000-8000-000000000000"
    status, body = await coordinator.api.put(f"/runners/{missing}", {"name": "x"})
    assert_error(status, body, 404, "RUNNER_NOT_FOUND", runner_id=missing)


# --- delete ----------------------------------------------------------------------------------------------------


async def test_delete_answers_success_and_then_the_runner_is_gone(coordinator: CoordinatorHandle) -> None:
    keep = (await register_runner(coordinator.api, name="keep"))["runner_id"]
    runner_id = (await register_runner(coordinator.api, name="drop"))["runner_id"]
    status, body = await coordinator.api.delete(f"/runners/{runner_id}")
    assert status == 200, body
    assert body == {"success": True, "message": "Runner deleted successfully"}
    status, body = await coordinator.api.get(f"/runners/{runner_id}")
    assert_error(status, body, 404, "RUNNER_NOT_FOUND", runner_id=runner_id)
    status, body = await coordinator.api.delete(f"/runners/{runner_id}")
    assert_error(status, body, 404, "RUNNER_NOT_FOUND", runner_id=runner_id)
    _, listed = await coordinator.api.get("/runners")
    assert [r["id"] for r in listed["runners"]] == [keep]
    assert listed["total_count"] == 1


async def _held_job(api: Api, runner_id: str, name: str) -> str:
    status, body = await api.post(f"/runners/{runner_id}/jobs", {"name": name, "steps": [{"name": "s", "run": "true"}]})
    assert status == 201, body
    assert body["status"] == "queued"
    return str(body["job_id"])


async def test_delete_of_a_runner_with_queued_jobs_is_refused_unless_forced(coordinator: CoordinatorHandle) -> None:
    api = coordinator.api
    # Registered through the API on a port nobody listens on: its jobs stay queued (held).
    runner_id = (await register_runner(api, host="127.0.0.1", port=free_port()))["runner_id"]
    jobs = [await _held_job(api, runner_id, f"held-{n}") for n in range(2)]

    status, body = await api.delete(f"/runners/{runner_id}")
    error = assert_error(status, body, 409, "RUNNER_BUSY", runner_id=runner_id)
    assert "force" in error["message"]
    status, _ = await api.get(f"/runners/{runner_id}")
    assert status == 200
    for job_id in jobs:
        assert (await api.job(runner_id, job_id))["status"] == "queued"

    status, body = await api.delete(f"/runners/{runner_id}?force=false")
    assert_error(status, body, 409, "RUNNER_BUSY")

    # Watch the live events while forcing: each queued job must be reported cancelled.
    ws_url = f"{coordinator.api_url}/runners/ws?runner_id={runner_id}"
    async with api.session.ws_connect(ws_url, headers={"X-API-Key": str(api.api_key)}) as ws:
        status, body = await api.delete(f"/runners/{runner_id}?force=true")
        assert status == 200, body
        assert body == {"success": True, "message": "Runner deleted successfully"}
        seen: dict[str, Any] = {}
        deleted = False
        while len(seen) < len(jobs) or not deleted:
            event = json.loads((await ws.receive(timeout=5)).data)
            if event["type"] == "job_status_change":
                seen[event["job_id"]] = (event["old_status"], event["new_status"])
            deleted = deleted or event["type"] == "runner_deleted"
    assert seen == {job_id: ("queued", "cancelled") for job_id in jobs}
    status, body = await api.get(f"/runners/{runner_id}")
    assert_error(status, body, 404, "RUNNER_NOT_FOUND")


async def test_a_runner_with_only_finished_jobs_deletes_without_force(coordinator: CoordinatorHandle) -> None:
    api = coordinator.api
    runner_id = (await register_runner(api, host="127.0.0.1", port=free_port()))["runner_id"]
    # An invalid force value is a validation error, not a silent "no".
    status, body = await api.delete(f"/runners/{runner_id}?force=maybe")
    assert_error(status, body, 400, "INVALID_REQUEST", field="force")
    status, body = await api.delete(f"/runners/{runner_id}")
    assert status == 200, body


# --- filters and pagination ------------------------------------------------------------------------------------

TYPES = ("docker", "kubernetes", "native", "local")


def _fleet_entry(n: int) -> dict[str, Any]:
    tags = ["fleet", "even" if n % 2 == 0 else "odd"]
    if n % 3 == 0:
        tags.append("gpu")
    # Every fifth runner announces a tiny heartbeat interval and never beats: liveness marks it inactive.
    metadata: dict[str, Any] = {"n": n}
    if n % 5 == 0:
        metadata["heartbeat_interval"] = 0.05
    return registration(name=f"fleet-{n:03d}", type=TYPES[n % 4], tags=tags, metadata=metadata)


async def _all_ids(api: Api, query: str) -> tuple[list[str], int]:
    status, body = await api.get(f"/runners?limit=1000&{query}")
    assert status == 200, body
    assert body["has_more"] is False
    return [r["id"] for r in body["runners"]], body["total_count"]


async def test_filters_and_pagination_over_120_runners(coordinator: CoordinatorHandle) -> None:
    api = coordinator.api
    fleet: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for n in range(120):
        entry = _fleet_entry(n)
        runner_id = (await register_runner(api, **entry))["runner_id"]
        fleet[runner_id] = {**entry, "n": n, "status": "inactive" if n % 5 == 0 else "active"}
        order.append(runner_id)

    async def quiet_ones_inactive() -> bool:
        _, body = await api.get("/runners?status=inactive&limit=1")
        return bool(body["total_count"] == 24)

    await wait_for(quiet_ones_inactive, 5, what="24 quiet runners to become inactive")

    def expected(pred: Any) -> list[str]:
        return [rid for rid in order if pred(fleet[rid])]

    # default limit 50, then the pages in a stable order that covers every runner once
    pages: list[str] = []
    for offset, size, more in ((0, 50, True), (50, 50, True), (100, 20, False)):
        query = "" if offset == 0 else f"?offset={offset}"
        status, body = await api.get(f"/runners{query}")
        assert status == 200, body
        assert (len(body["runners"]), body["total_count"], body["has_more"]) == (size, 120, more), offset
        pages += [r["id"] for r in body["runners"]]
    assert pages == order

    # edges of has_more
    for query, size, more in (
        ("limit=120", 120, False),
        ("limit=119", 119, True),
        ("limit=1&offset=118", 1, True),
        ("limit=1&offset=119", 1, False),
        ("limit=10&offset=115", 5, False),
        ("offset=120", 0, False),
        ("offset=5000", 0, False),
    ):
        status, body = await api.get(f"/runners?{query}")
        assert status == 200, body
        assert (len(body["runners"]), body["total_count"], body["has_more"]) == (size, 120, more), query
    _, body = await api.get("/runners?limit=1&offset=119")
    assert body["runners"][0]["id"] == order[119]

    # status
    ids, total = await _all_ids(api, "status=inactive")
    assert (ids, total) == (expected(lambda r: r["status"] == "inactive"), 24)
    assert all(fleet[rid]["n"] % 5 == 0 for rid in ids)
    ids, total = await _all_ids(api, "status=active")
    assert (ids, total) == (expected(lambda r: r["status"] == "active"), 96)
    assert await _all_ids(api, "status=error") == ([], 0)

    # type
    for kind in TYPES:
        ids, total = await _all_ids(api, f"type={kind}")
        assert (ids, total) == (expected(lambda r, kind=kind: r["type"] == kind), 30), kind
    status, body = await api.get("/runners?type=docker&limit=10&offset=25")
    assert (len(body["runners"]), body["total_count"], body["has_more"]) == (5, 30, False)
    status, body = await api.get("/runners?type=docker&limit=10&offset=10")
    assert (len(body["runners"]), body["total_count"], body["has_more"]) == (10, 30, True)

    # tags: every listed tag must be present
    ids, total = await _all_ids(api, "tags=gpu")
    assert (ids, total) == (expected(lambda r: "gpu" in r["tags"]), 40)
    ids, total = await _all_ids(api, "tags=gpu,even")
    assert (ids, total) == (expected(lambda r: {"gpu", "even"} <= set(r["tags"])), 20)
    assert await _all_ids(api, "tags=even,%20gpu%20") == (ids, 20)
    assert await _all_ids(api, "tags=even,odd") == ([], 0)
    assert await _all_ids(api, "tags=gpu,nope") == ([], 0)
    ids, total = await _all_ids(api, "tags=fleet")
    assert total == 120

    # all three together, with paging
    def combined(r: dict[str, Any]) -> bool:
        return r["status"] == "active" and r["type"] == "docker" and {"gpu", "even"} <= set(r["tags"])

    ids, total = await _all_ids(api, "status=active&type=docker&tags=gpu,even")
    assert ids == expected(combined) and total == len(ids) > 0
    status, body = await api.get("/runners?status=active&type=docker&tags=gpu,even&limit=1&offset=0")
    assert body["total_count"] == total
    assert body["has_more"] is (total > 1)
    assert [r["id"] for r in body["runners"]] == ids[:1]
    for runner in body["runners"]:
        assert runner["status"] == "active" and runner["type"] == "docker"
        assert {"gpu", "even"} <= set(runner["tags"])
