"""``POST /runners/bulk``: one operation over the runners the filters match, each runner's outcome on its own.

The fleet: three live agents and one runner registered through the API with no agent behind it (unreachable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.daemon import Agent
from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, Api, assert_error, register_runner, submit_job


@dataclass
class Fleet:
    api: Api
    blue: Agent  # tags bulk, blue
    green: Agent  # tags bulk, green
    other: Agent  # tags other
    ghost: str  # API-registered, no agent; tags bulk, ghost
    ghost_docker: str  # API-registered docker runner, no agent; tags other

    def id(self, agent: Agent) -> str:
        return agent.identity().runner_id


async def _fleet(coordinator: CoordinatorHandle, start_agent: StartAgent) -> Fleet:
    api = coordinator.api
    blue = await start_agent("blue", runner={"name": "blue", "tags": ["bulk", "blue"]})
    green = await start_agent("green", runner={"name": "green", "tags": ["bulk", "green"]})
    other = await start_agent("other", runner={"name": "other", "tags": ["other"]})
    ghost = await register_runner(api, name="ghost", type="native", tags=["bulk", "ghost"])
    ghost_docker = await register_runner(api, name="ghost-docker", type="docker", tags=["other"])
    return Fleet(api, blue, green, other, ghost["runner_id"], ghost_docker["runner_id"])


async def _bulk(api: Api, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The answer, and its results by runner id (each result with exactly the spec's keys, or an error)."""
    status, answer = await api.post("/runners/bulk", body)
    assert status == 200, answer
    assert set(answer) == {"success", "affected_runners", "results"}, answer
    results = {item["runner_id"]: item for item in answer["results"]}
    assert len(results) == len(answer["results"]) == answer["affected_runners"], answer
    assert answer["success"] is all(item["success"] for item in answer["results"]), answer
    for item in answer["results"]:
        if item["success"]:
            assert item.get("error") is None, item
        else:
            assert item["error"]["code"] and item["error"]["message"], item
    return answer, results


def _unavailable(result: dict[str, Any]) -> None:
    assert result["success"] is False, result
    assert result["error"]["code"] == "RUNNER_UNAVAILABLE", result


async def _configuration(api: Api, runner_id: str) -> dict[str, Any]:
    status, body = await api.get(f"/runners/{runner_id}/config")
    assert status == 200, body
    return dict(body["configuration"])


async def _status(api: Api, runner_id: str) -> str:
    status, body = await api.get(f"/runners/{runner_id}")
    assert status == 200, body
    return str(body["status"])


async def test_update_config_applies_to_each_match_and_the_unreachable_runner_fails_alone(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    fleet = await _fleet(coordinator, start_agent)
    api = fleet.api
    untouched = await _configuration(api, fleet.id(fleet.other))
    answer, results = await _bulk(
        api,
        {
            "operation": "update_config",
            "filters": {"tags": ["bulk"]},
            "data": {"max_concurrent_jobs": 8, "job_timeout": 1800},
        },
    )
    assert answer["affected_runners"] == 3
    assert answer["success"] is False
    assert set(results) == {fleet.id(fleet.blue), fleet.id(fleet.green), fleet.ghost}
    _unavailable(results[fleet.ghost])
    for agent in (fleet.blue, fleet.green):
        assert results[fleet.id(agent)]["success"] is True, results
        configuration = await _configuration(api, fleet.id(agent))
        assert (configuration["max_concurrent_jobs"], configuration["job_timeout"]) == (8, 1800)
    assert await _configuration(api, fleet.id(fleet.other)) == untouched

    # Filters combine: every tag must match, and type narrows further.
    answer, results = await _bulk(
        api, {"operation": "update_config", "filters": {"tags": ["bulk", "blue"]}, "data": {"job_timeout": 900}}
    )
    assert (answer["success"], answer["affected_runners"]) == (True, 1), answer
    assert list(results) == [fleet.id(fleet.blue)]
    answer, results = await _bulk(
        api, {"operation": "update_config", "filters": {"type": "docker"}, "data": {"job_timeout": 900}}
    )
    assert answer["affected_runners"] == 1 and list(results) == [fleet.ghost_docker]
    _unavailable(results[fleet.ghost_docker])
    answer, results = await _bulk(
        api, {"operation": "update_config", "filters": {"tags": ["nobody"]}, "data": {"job_timeout": 900}}
    )
    assert answer == {"success": True, "affected_runners": 0, "results": []}


async def test_stop_start_and_restart_over_filters(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    fleet = await _fleet(coordinator, start_agent)
    api = fleet.api
    live = {fleet.id(fleet.blue), fleet.id(fleet.green)}

    answer, results = await _bulk(api, {"operation": "stop", "filters": {"tags": ["bulk"]}, "data": {"graceful": True}})
    assert answer["affected_runners"] == 3 and answer["success"] is False
    assert {r for r, item in results.items() if item["success"]} == live
    _unavailable(results[fleet.ghost])
    for runner_id in live:
        assert await _status(api, runner_id) == "stopped"
    assert fleet.blue.state == fleet.green.state == "stopped"
    assert await _status(api, fleet.id(fleet.other)) == "active"
    assert await _status(api, fleet.ghost) == "active", "a failed stop changed the registry"

    # A job for a stopped runner is held until the bulk start.
    held = await submit_job(api, fleet.id(fleet.blue), "held", "true")
    answer, results = await _bulk(api, {"operation": "start", "filters": {"status": "stopped"}})
    assert answer["affected_runners"] == 2 and answer["success"] is True
    assert set(results) == live
    for runner_id in live:
        await api.wait_runner_status(runner_id, "active", timeout=5)
    assert (await api.wait_job(fleet.id(fleet.blue), held, TERMINAL))["status"] == "completed"

    answer, results = await _bulk(api, {"operation": "restart", "filters": {"type": "native", "tags": ["bulk"]}})
    assert answer["affected_runners"] == 3
    assert {r for r, item in results.items() if item["success"]} == live
    _unavailable(results[fleet.ghost])
    for runner_id in live:
        await api.wait_runner_status(runner_id, "active", timeout=5)
    assert fleet.blue.state == fleet.green.state == fleet.other.state == "running"


async def test_delete_over_filters_refuses_busy_runners_unless_forced(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    fleet = await _fleet(coordinator, start_agent)
    api = fleet.api
    held = await submit_job(api, fleet.ghost, "held", "true")  # the ghost has an open job

    answer, results = await _bulk(api, {"operation": "delete", "filters": {"tags": ["bulk"]}})
    assert answer["affected_runners"] == 3 and answer["success"] is False
    assert results[fleet.ghost]["success"] is False
    assert results[fleet.ghost]["error"]["code"] == "RUNNER_BUSY", results[fleet.ghost]
    for agent in (fleet.blue, fleet.green):
        assert results[fleet.id(agent)]["success"] is True
    for runner_id in (fleet.id(fleet.blue), fleet.id(fleet.green)):
        status, body = await api.get(f"/runners/{runner_id}")
        assert_error(status, body, 404, "RUNNER_NOT_FOUND")
    assert (await api.job(fleet.ghost, held))["status"] == "queued"

    answer, results = await _bulk(api, {"operation": "delete", "filters": {"tags": ["ghost"]}, "data": {"force": True}})
    assert answer == {"success": True, "affected_runners": 1, "results": list(results.values())}
    status, body = await api.get(f"/runners/{fleet.ghost}")
    assert_error(status, body, 404, "RUNNER_NOT_FOUND")
    assert await _status(api, fleet.id(fleet.other)) == "active"


async def test_invalid_operation_or_data_is_400_and_changes_nothing(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    fleet = await _fleet(coordinator, start_agent)
    api = fleet.api
    before = {r: await _configuration(api, r) for r in (fleet.id(fleet.blue), fleet.id(fleet.green))}
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"operation": "reboot"}, "operation"),
        ({}, "operation"),
        ({"operation": "update_config"}, "data"),
        ({"operation": "update_config", "data": {}}, "data"),
        ({"operation": "update_config", "data": {"max_concurrent_jobs": 0}}, "data.max_concurrent_jobs"),
        ({"operation": "update_config", "data": {"max_concurrent_jobs": 8, "bogus": 1}}, "data.bogus"),
        ({"operation": "update_config", "data": {"cleanup_policy": "sometimes"}}, "data.cleanup_policy"),
        ({"operation": "stop", "data": {"timeout": -1}}, None),
        ({"operation": "stop", "data": {"graceful": "maybe"}}, None),
        ({"operation": "delete", "data": {"force": True, "cascade": True}}, "data"),
        ({"operation": "stop", "filters": {"status": "sleeping"}}, "filters.status"),
        ({"operation": "stop", "filters": {"colour": "blue"}}, "filters.colour"),
        ({"operation": "stop", "everything": True}, "everything"),
    ]
    for body, field in cases:
        status, answer = await api.post("/runners/bulk", body)
        error = assert_error(status, answer, 400, "INVALID_REQUEST")
        if field is not None:
            assert error["details"].get("field") == field, (body, answer)
        else:
            assert error["details"].get("field"), (body, answer)
    status, answer = await api.post("/runners/bulk", data="[]", headers={"Content-Type": "application/json"})
    assert_error(status, answer, 400, "INVALID_REQUEST")

    for runner_id, configuration in before.items():
        assert await _configuration(api, runner_id) == configuration
        assert await _status(api, runner_id) == "active"
    assert fleet.blue.state == fleet.green.state == fleet.other.state == "running"
