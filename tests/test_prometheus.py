"""Prometheus ``/metrics`` of the coordinator and of an agent, read with Prometheus' own text parser."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from typing import Any

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agent.daemon import Agent
from coordinator import keys
from coordinator.metrics import CoordinatorMetrics
from shared.timeutil import isoformat, utcnow
from tests.conftest import API_KEY, CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, free_port, register_runner, wait_for
from tests.log_support import stored_entries


async def scrape(url: str) -> list[Sample]:
    """``GET url`` without credentials; every sample of the exposition."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await response.text()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return float(found[0])


async def run_jobs(coordinator: CoordinatorHandle, runner_id: str, *commands: str) -> list[dict[str, Any]]:
    jobs = []
    for n, command in enumerate(commands):
        code, body = await coordinator.api.post(
            f"/runners/{runner_id}/jobs", {"name": f"job-{n}", "steps": [{"name": "only", "run": command}]}
        )
        assert code == 201, body
        jobs.append(await coordinator.api.wait_job(runner_id, body["job_id"], TERMINAL))
    return jobs


# --- coordinator ---------------------------------------------------------------------------------------------


async def test_coordinator_metrics_after_two_completed_jobs_and_one_failed(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    jobs = await run_jobs(coordinator, runner_id, "echo one", "echo two", "echo three; exit 3")
    assert [j["status"] for j in jobs] == ["completed", "completed", "failed"]
    code, _ = await coordinator.api.get("/no-such-route")
    assert code == 404

    samples = await scrape(f"{coordinator.url}/metrics")

    # Read from the store at scrape time: open jobs now (none), finished ones counted as they finished.
    assert {s.labels["status"]: s.value for s in samples if s.name == "rustci_jobs"} == {"queued": 0, "running": 0}
    assert value(samples, "rustci_jobs_finished_total", status="completed") == 2
    assert value(samples, "rustci_jobs_finished_total", status="failed") == 1
    assert value(samples, "rustci_jobs_finished_total", status="timed_out") == 0
    assert value(samples, "rustci_storage_errors_total") == 0
    assert value(samples, "rustci_runners", status="active", type="native") == 1
    assert value(samples, "rustci_runners", status="inactive", type="native") == 0
    # Observed once per job, when its terminal event was applied.
    assert value(samples, "rustci_job_duration_seconds_count", status="completed") == 2
    assert value(samples, "rustci_job_duration_seconds_count", status="failed") == 1
    assert value(samples, "rustci_job_duration_seconds_sum", status="completed") > 0
    assert value(samples, "rustci_step_duration_seconds_count", status="completed") == 2
    assert value(samples, "rustci_step_duration_seconds_count", status="failed") == 1
    # Requests by route template, method and status; latency by route and method.
    jobs_route = "/api/runners/{runner_id}/jobs"
    assert value(samples, "rustci_http_requests_total", route=jobs_route, method="POST", status="201") == 3
    assert value(samples, "rustci_http_request_duration_seconds_count", route=jobs_route, method="POST") == 3
    assert value(samples, "rustci_http_requests_total", route="unmatched", method="GET", status="404") == 1
    routes = {s.labels["route"] for s in samples if "route" in s.labels}
    assert all(route.startswith("/") or route == "unmatched" for route in routes), routes
    assert not [route for route in routes if re.search(r"(runner|job)_[0-9a-f]{8}", route)], routes
    # Every log entry stored was counted, once.
    stored = len(await stored_entries(coordinator))
    assert stored > 0
    assert value(samples, "rustci_log_entries_ingested_total") == stored
    assert value(samples, "rustci_websocket_clients") == 0
    assert value(samples, "rustci_sse_clients") == 0


async def test_stream_clients_are_counted(coordinator: CoordinatorHandle) -> None:
    url = f"{coordinator.api_url}/runners/ws"
    async with coordinator.api.session.ws_connect(url, headers={"X-API-Key": API_KEY}):

        async def one_client() -> bool:
            return value(await scrape(f"{coordinator.url}/metrics"), "rustci_websocket_clients") == 1

        await wait_for(one_client, what="the WebSocket client counted")
    assert coordinator.app is not None
    hub = coordinator.app[keys.HUB]
    await wait_for(lambda: _is_zero(hub.client_count), what="the client gone")
    samples = await scrape(f"{coordinator.url}/metrics")
    assert value(samples, "rustci_websocket_clients") == 0
    # The session is one request; how long it lasted is no request latency.
    ws_route = "/api/runners/ws"
    assert value(samples, "rustci_http_requests_total", route=ws_route, method="GET", status="101") == 1
    assert not [
        s for s in samples if s.name.startswith("rustci_http_request_duration") and s.labels["route"] == ws_route
    ]

    # A log followed as Server-Sent Events.
    runner_id = (await register_runner(coordinator.api, host="127.0.0.1", port=free_port()))["runner_id"]
    async with coordinator.api.session.get(
        f"{coordinator.api_url}/runners/{runner_id}/logs?follow=true",
        headers={"X-API-Key": API_KEY, "Accept": "text/event-stream"},
    ) as stream:
        assert stream.status == 200

        async def one_follower() -> bool:
            return value(await scrape(f"{coordinator.url}/metrics"), "rustci_sse_clients") == 1

        await wait_for(one_follower, what="the SSE client counted")


async def _is_zero(count: int) -> bool:
    return count == 0


def test_each_coordinator_counts_in_its_own_registry() -> None:
    first, second = CoordinatorMetrics(), CoordinatorMetrics()
    first.observe_request("/api/runners", "GET", 200, 0.01)
    assert b'rustci_http_requests_total{method="GET",route="/api/runners",status="200"} 1.0' in first.exposition()
    assert b'route="/api/runners"' not in second.exposition()


# --- agent ---------------------------------------------------------------------------------------------------


def agent_metrics_url(agent: Agent) -> str:
    return f"http://127.0.0.1:{agent.port}/metrics"


async def test_agent_metrics_after_two_completed_jobs_one_failed_and_an_executor_error(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    await run_jobs(coordinator, runner_id, "echo one", "echo two", "exit 3")
    # The second step's working directory is a file the first step made: the executor cannot start that step
    # (an executor error, not the job's command failing).
    code, body = await coordinator.api.post(
        f"/runners/{runner_id}/jobs",
        {
            "name": "broken",
            "steps": [
                {"name": "block", "run": "touch blocker"},
                {"name": "nowhere", "run": "true", "working_directory": "blocker"},
            ],
        },
    )
    assert code == 201, body
    broken = await coordinator.api.wait_job(runner_id, body["job_id"], TERMINAL)
    assert broken["status"] == "failed"

    samples = await scrape(agent_metrics_url(agent))
    assert value(samples, "rustci_agent_job_outcomes_total", status="completed") == 2
    assert value(samples, "rustci_agent_job_outcomes_total", status="failed") == 2
    assert value(samples, "rustci_agent_step_duration_seconds_count", status="completed") == 3
    assert value(samples, "rustci_agent_step_duration_seconds_count", status="failed") == 1
    assert value(samples, "rustci_agent_step_duration_seconds_count", status="error") == 1
    assert value(samples, "rustci_agent_executor_errors_total", phase="run_step") == 1
    assert value(samples, "rustci_agent_executor_errors_total", phase="setup") == 0
    assert value(samples, "rustci_agent_jobs_running") == 0
    assert value(samples, "rustci_agent_jobs_queued") == 0
    assert value(samples, "rustci_agent_heartbeat_failures_total") == 0


async def test_agent_running_and_queued_jobs(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent(max_concurrent_jobs=1)
    runner_id = agent.identity().runner_id
    for name in ("first", "second"):
        code, body = await coordinator.api.post(
            f"/runners/{runner_id}/jobs", {"name": name, "steps": [{"name": "wait", "run": "sleep 30"}]}
        )
        assert code == 201, body

    async def one_running_one_queued() -> bool:
        samples = await scrape(agent_metrics_url(agent))
        return value(samples, "rustci_agent_jobs_running") == 1 and value(samples, "rustci_agent_jobs_queued") == 1

    await wait_for(one_running_one_queued, what="one running and one queued job")


async def test_agent_spool_heartbeat_failures_and_drops_while_the_coordinator_is_down(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(metrics_interval=0.02, metrics_buffer=3)
    url = agent_metrics_url(agent)
    await coordinator.stop()
    # Something for the coordinator that cannot be delivered now.
    await agent.outbox.emit({"kind": "log", "at": isoformat(utcnow()), "level": "info", "message": "kept for later"})

    async def failing_and_dropping() -> list[Sample] | None:
        samples = await scrape(url)
        failed = value(samples, "rustci_agent_heartbeat_failures_total") >= 2
        dropped = value(samples, "rustci_agent_spool_dropped_total", kind="metric_samples") >= 1
        return samples if failed and dropped else None

    samples = await wait_for(failing_and_dropping, what="heartbeat failures and dropped samples")
    assert value(samples, "rustci_agent_metric_samples_buffered") == 3
    assert value(samples, "rustci_agent_spool_dropped_total", kind="log_entries") == 0

    def outbox(conn: sqlite3.Connection) -> tuple[int, int]:
        row = conn.execute("SELECT COUNT(*), SUM(LENGTH(CAST(body AS BLOB))) FROM outbox").fetchone()
        return int(row[0]), int(row[1])

    events, size = await agent.store.db.read(outbox)
    assert events >= 1
    assert value(samples, "rustci_agent_spool_events") == events
    assert value(samples, "rustci_agent_spool_bytes") == size


# --- what both daemons share -----------------------------------------------------------------------------------


async def test_both_daemons_serve_process_python_and_build_info_and_no_created_series(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    for component, url in (("coordinator", coordinator.url), ("agent", f"http://127.0.0.1:{agent.port}")):
        samples = await scrape(f"{url}/metrics")
        names = {s.name for s in samples}
        assert value(samples, "process_resident_memory_bytes") > 0, component
        assert value(samples, "process_open_fds") > 0
        assert "python_info" in names and "python_gc_collections_total" in names
        build = [s for s in samples if s.name == "rustci_build_info"]
        assert len(build) == 1 and build[0].value == 1
        assert build[0].labels["component"] == component and build[0].labels["version"]
        assert not [name for name in names if name.endswith("_created")], component


async def test_open_jobs_gauge_says_what_runs_now(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent(max_concurrent_jobs=1)
    runner_id = agent.identity().runner_id
    job_ids = []
    for n in range(2):
        code, body = await coordinator.api.post(
            f"/runners/{runner_id}/jobs", {"name": f"slow-{n}", "steps": [{"name": "s", "run": "sleep 30"}]}
        )
        assert code == 201, body
        job_ids.append(body["job_id"])
    await coordinator.api.wait_job(runner_id, job_ids[0], {"running"})
    samples = await scrape(f"{coordinator.url}/metrics")
    assert value(samples, "rustci_jobs", status="running") == 1
    assert value(samples, "rustci_jobs", status="queued") == 1
    for job_id in job_ids:
        await coordinator.api.post(f"/runners/{runner_id}/jobs/{job_id}/cancel")
        await coordinator.api.wait_job(runner_id, job_id, {"cancelled"})
    samples = await scrape(f"{coordinator.url}/metrics")
    assert value(samples, "rustci_jobs", status="running") == 0 and value(samples, "rustci_jobs", status="queued") == 0


async def test_storage_errors_are_counted_and_constraint_violations_are_not(tmp_path: Any) -> None:
    from shared.sqlite import Database

    db = Database(tmp_path / "t.db", ["CREATE TABLE t (id INTEGER PRIMARY KEY)"])
    await db.open()
    try:
        await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
        with pytest.raises(sqlite3.IntegrityError):
            await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
        assert db.errors == 0
        with pytest.raises(sqlite3.OperationalError):
            await db.read(lambda conn: conn.execute("SELECT * FROM missing"))
        with pytest.raises(sqlite3.OperationalError):
            await db.run(lambda conn: conn.execute("INSERT INTO missing VALUES (1)"))
        assert db.errors == 2
    finally:
        await db.close()
