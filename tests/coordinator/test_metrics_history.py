"""Metrics history through the API and a real agent: samples arriving with heartbeats, bucket averages, the
summary, compaction at start, uptime in the runner's statistics. What the store itself does (downsampling,
retention, resent and late samples, uptime maths) is tested on both engines in
``tests/store/test_metric_history.py``."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator import keys
from coordinator.store.base import JobRecord, RunnerRecord
from coordinator.store.metrics import MetricsStore
from coordinator.store.sqlite import SqliteStore
from shared import ids
from shared.models import JobEvent, JobSubmission, MetricSample
from shared.timeutil import from_epoch, isoformat
from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import assert_error, wait_for

HOUR, DAY = 3600, 86400


def sample(at: float, cpu: float, memory: float, disk: float = 20.0, jobs: int = 0) -> MetricSample:
    return MetricSample(at=from_epoch(at), cpu_usage=cpu, memory_usage=memory, disk_usage=disk, active_jobs=jobs)


def runner_record(registered_at: float) -> RunnerRecord:
    return RunnerRecord(
        id=ids.new_runner_id(),
        name="synthetic",
        type="native",
        status="active",
        host="127.0.0.1",
        port=1,
        token=ids.new_runner_token(),
        registered_at=registered_at,
        last_seen=registered_at,
        heartbeat_interval=10.0,
    )


async def add_runner(coordinator: CoordinatorHandle, registered_at: float | None = None) -> str:
    record = runner_record(time.time() if registered_at is None else registered_at)
    await coordinator.store.insert_runner(record)
    return record.id


def metrics_store(coordinator: CoordinatorHandle) -> MetricsStore:
    assert coordinator.app is not None
    return coordinator.app[keys.METRICS_STORE]


def iso(at: float) -> str:
    return isoformat(from_epoch(at))


def points(body: dict[str, Any], name: str) -> list[tuple[str, float]]:
    return [(p["timestamp"], p["value"]) for p in body["metrics"][name]]


# --- bucket math ---------------------------------------------------------------------------------------------


async def test_buckets_are_aligned_averages_and_the_summary_covers_the_period(coordinator: CoordinatorHandle) -> None:
    runner_id = await add_runner(coordinator)
    now = time.time()
    t0 = (now - 3000) // 300 * 300  # a 5-minute boundary 50-55 minutes ago: inside the last hour
    synthetic = [
        sample(t0 + 10, cpu=10, memory=40, jobs=1),
        sample(t0 + 70, cpu=20, memory=50, jobs=2),
        sample(t0 + 130, cpu=60, memory=60, jobs=3),
        sample(t0 + 301, cpu=5.5, memory=10.1, disk=30),
        sample(t0 + 302, cpu=7.5, memory=20.3, disk=30),
        # Two hours ago: outside "1h", inside "24h".
        sample(now - 2 * HOUR, cpu=99, memory=99, disk=99, jobs=9),
    ]
    assert await metrics_store(coordinator).add_samples(runner_id, synthetic, now) == 6

    code, body = await coordinator.api.get(f"/runners/{runner_id}/metrics?period=1h&resolution=5m")
    assert code == 200, body
    assert (body["runner_id"], body["period"], body["resolution"]) == (runner_id, "1h", "5m")
    assert points(body, "cpu_usage") == [(iso(t0), 30.0), (iso(t0 + 300), 6.5)]
    assert points(body, "memory_usage") == [(iso(t0), 50.0), (iso(t0 + 300), 15.2)]
    assert points(body, "disk_usage") == [(iso(t0), 20.0), (iso(t0 + 300), 30.0)]
    assert points(body, "active_jobs") == [(iso(t0), 2.0), (iso(t0 + 300), 0.0)]
    assert body["summary"] == {
        "avg_cpu_usage": 20.6,  # (10 + 20 + 60 + 5.5 + 7.5) / 5
        "max_cpu_usage": 60.0,
        "avg_memory_usage": 36.08,  # (40 + 50 + 60 + 10.1 + 20.3) / 5
        "max_memory_usage": 60.0,
        "total_jobs_executed": 0,
    }

    code, body = await coordinator.api.get(f"/runners/{runner_id}/metrics?period=1h&resolution=1m")
    assert code == 200, body
    assert points(body, "cpu_usage") == [
        (iso(t0), 10.0),
        (iso(t0 + 60), 20.0),
        (iso(t0 + 120), 60.0),
        (iso(t0 + 300), 6.5),
    ]

    code, body = await coordinator.api.get(f"/runners/{runner_id}/metrics?period=24h&resolution=1h")
    assert code == 200, body
    hours: dict[float, list[float]] = {}
    for s in synthetic:
        hours.setdefault(s.at.timestamp() // HOUR * HOUR, []).append(s.cpu_usage)
    assert points(body, "cpu_usage") == [(iso(h), round(sum(v) / len(v), 2)) for h, v in sorted(hours.items())]
    assert body["summary"]["max_cpu_usage"] == 99.0
    assert body["summary"]["avg_cpu_usage"] == round((103 + 99) / 6, 2)


async def test_defaults_are_24h_at_5m_and_no_samples_is_an_empty_history(coordinator: CoordinatorHandle) -> None:
    runner_id = await add_runner(coordinator)
    code, body = await coordinator.api.get(f"/runners/{runner_id}/metrics")
    assert code == 200, body
    assert (body["period"], body["resolution"]) == ("24h", "5m")
    assert body["metrics"] == {"cpu_usage": [], "memory_usage": [], "disk_usage": [], "active_jobs": []}
    assert body["summary"] == {
        "avg_cpu_usage": None,
        "max_cpu_usage": None,
        "avg_memory_usage": None,
        "max_memory_usage": None,
        "total_jobs_executed": 0,
    }


@pytest.mark.parametrize(("query", "field"), [("period=2h", "period"), ("resolution=10s", "resolution")])
async def test_an_unknown_period_or_resolution_is_invalid(
    coordinator: CoordinatorHandle, query: str, field: str
) -> None:
    runner_id = await add_runner(coordinator)
    code, body = await coordinator.api.get(f"/runners/{runner_id}/metrics?{query}")
    error = assert_error(code, body, 400, "INVALID_REQUEST", field=field)
    assert field in error["message"]


async def test_total_jobs_executed_counts_jobs_that_ended_in_the_period(coordinator: CoordinatorHandle) -> None:
    runner_id = await add_runner(coordinator)
    store = coordinator.store
    now = time.time()
    # Jobs reported by the agent's events as the store applies them: three ended at different times, one runs.
    events: list[JobEvent] = []
    for status, ended_at in (("completed", now - 600), ("failed", now - 1800), ("timed_out", now - 2 * DAY), (None, 0)):
        started_at = (ended_at or now) - 60
        job = JobRecord(
            id=ids.new_job_id(),
            runner_id=runner_id,
            spec=JobSubmission.model_validate({"name": "j", "steps": [{"name": "s", "run": "true"}]}),
            status="queued",
            created_at=started_at - 5,
        )
        await store.insert_job(job)
        events.append(
            JobEvent(seq=len(events) + 1, job_id=job.id, attempt=1, status="running", at=from_epoch(started_at))
        )
        if status is not None:
            events.append(
                JobEvent.model_validate(
                    {
                        "seq": len(events) + 1,
                        "job_id": job.id,
                        "attempt": 1,
                        "status": status,
                        "final": True,
                        "at": from_epoch(ended_at),
                    }
                )
            )
    await store.apply_events(runner_id, events)
    for period, expected in (("1h", 2), ("24h", 2), ("7d", 3)):
        code, body = await coordinator.api.get(f"/runners/{runner_id}/metrics?period={period}")
        assert code == 200, body
        assert body["summary"]["total_jobs_executed"] == expected, period


# --- from a real agent ---------------------------------------------------------------------------------------


async def test_agent_samples_arrive_with_heartbeats(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent(metrics_interval=0.05)
    runner_id = agent.identity().runner_id
    history = metrics_store(coordinator)

    async def stored() -> int:
        found = await history.history(runner_id, time.time() - 60, time.time(), 60)
        return found.samples if found is not None and found.samples >= 5 else 0

    await wait_for(stored, what="five samples stored")
    code, body = await coordinator.api.get(f"/runners/{runner_id}/metrics?period=1h&resolution=1m")
    assert code == 200, body
    for name in ("cpu_usage", "memory_usage", "disk_usage", "active_jobs"):
        assert body["metrics"][name], name
        for point in body["metrics"][name]:
            assert point["timestamp"].endswith(":00.000Z"), point
    assert 0 <= body["summary"]["avg_memory_usage"] <= body["summary"]["max_memory_usage"] <= 100
    code, runner = await coordinator.api.get(f"/runners/{runner_id}")
    assert code == 200, runner
    assert runner["statistics"]["uptime_percentage"] == 100.0


async def test_samples_taken_while_the_coordinator_is_down_arrive_after_it_returns(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(metrics_interval=0.05)
    runner_id = agent.identity().runner_id
    await coordinator.stop()
    down_since = time.time()
    # Counted from ``down_since``: samples taken while the coordinator was shutting down are buffered too.
    await wait_for(lambda: _taken_since(agent, down_since, 10), what="samples buffered on the agent")
    down_until = time.time()
    await coordinator.start()

    async def delivered() -> bool:
        found = await metrics_store(coordinator).history(runner_id, down_since, down_until, 60)
        return found is not None and found.samples >= 10

    await wait_for(delivered, what="the buffered samples stored")


async def _taken_since(agent: Any, since: float, minimum: int) -> bool:
    return sum(1 for s in agent.metrics.samples.pending(100_000) if s.at.timestamp() >= since) >= minimum


async def _at_least(value: int, minimum: int) -> bool:
    return value >= minimum


# --- downsampling and retention ------------------------------------------------------------------------------


async def _tiers(db: Any, runner_id: str) -> dict[str, tuple[int, float | None, float | None]]:
    def op(conn: sqlite3.Connection) -> dict[str, tuple[int, float | None, float | None]]:
        seq = conn.execute("SELECT seq FROM runners WHERE id = ?", (runner_id,)).fetchone()[0]
        raw = conn.execute(
            "SELECT COUNT(*), MIN(ts) / 1000.0, MAX(ts) / 1000.0 FROM metric_samples WHERE runner = ?", (seq,)
        ).fetchone()
        out = {"raw": (int(raw[0]), raw[1], raw[2])}
        for width, name in ((300, "5m"), (3600, "1h")):
            row = conn.execute(
                "SELECT COUNT(*), MIN(ts), MAX(ts) FROM metric_rollups WHERE runner = ? AND width = ?", (seq, width)
            ).fetchone()
            out[name] = (int(row[0]), row[1], row[2])
        return out

    result: dict[str, tuple[int, float | None, float | None]] = await db.read(op)
    return result


@pytest.mark.sqlite_only
async def test_deleting_a_runner_deletes_its_history(coordinator: CoordinatorHandle) -> None:
    runner_id = await add_runner(coordinator)
    history = metrics_store(coordinator)
    now = time.time()
    await history.add_samples(runner_id, [sample(now - 2 * DAY, 1, 1), sample(now - 60, 2, 2)], now)
    await history.compact(now)
    assert await _history_rows(coordinator) == 2
    code, body = await coordinator.api.delete(f"/runners/{runner_id}")
    assert code == 200, body
    assert await _history_rows(coordinator) == 0
    # Samples for a runner that is gone are not stored (a heartbeat racing the delete).
    assert await history.add_samples(runner_id, [sample(now - 30, 3, 3)], now) == 0


async def _history_rows(coordinator: CoordinatorHandle) -> int:
    def op(conn: sqlite3.Connection) -> int:
        raw = conn.execute("SELECT COUNT(*) FROM metric_samples").fetchone()[0]
        return int(raw) + int(conn.execute("SELECT COUNT(*) FROM metric_rollups").fetchone()[0])

    rows: int = await coordinator.store.db.read(op)
    return rows


@pytest.mark.sqlite_only
async def test_the_app_compacts_at_start_and_stops_the_task_on_shutdown(coordinator: CoordinatorHandle) -> None:
    runner_id = await add_runner(coordinator)
    now = time.time()
    await metrics_store(coordinator).add_samples(runner_id, [sample(now - 2 * DAY, 10, 10)], now)
    assert (await _tiers(coordinator.store.db, runner_id))["raw"][0] == 1
    await coordinator.restart()

    async def rolled() -> bool:
        tiers = await _tiers(coordinator.store.db, runner_id)
        return tiers["raw"][0] == 0 and tiers["5m"][0] == 1

    await wait_for(rolled, what="the startup compaction")
    await coordinator.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "metrics:compaction" and not t.done()]


# --- uptime --------------------------------------------------------------------------------------------------


async def test_uptime_is_the_share_of_time_since_registration_with_samples(coordinator: CoordinatorHandle) -> None:
    now = time.time()
    registered = now // 300 * 300 - 10 * DAY
    runner_id = await add_runner(coordinator, registered_at=registered)
    history = metrics_store(coordinator)
    # Up for the first five of its ten days, one sample a minute, then silent.
    await history.add_samples(runner_id, [sample(registered + i * 60, 5, 5) for i in range(5 * 1440)], now)
    assert await history.uptime_percentage(runner_id, registered, now) == 50.0
    await history.compact(now)
    assert await history.uptime_percentage(runner_id, registered, now) == 50.0
    code, body = await coordinator.api.get(f"/runners/{runner_id}")
    assert code == 200, body
    assert body["statistics"]["uptime_percentage"] == pytest.approx(50.0, abs=0.1)


async def test_a_runner_without_samples_has_zero_uptime(coordinator: CoordinatorHandle) -> None:
    runner_id = await add_runner(coordinator, registered_at=time.time() - HOUR)
    code, body = await coordinator.api.get(f"/runners/{runner_id}")
    assert code == 200, body
    assert body["statistics"]["uptime_percentage"] == 0.0


# --- storage per runner --------------------------------------------------------------------------------------


async def test_storage_per_runner_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One day of samples at the default 10 s interval, measured in each tier (SQLite's own page accounting)."""
    store = SqliteStore(tmp_path / "size.db")
    await store.open()
    try:
        day_start = time.time() // DAY * DAY - 40 * DAY
        record = runner_record(day_start)
        await store.insert_runner(record)
        history = MetricsStore(store.db)
        day = [sample(day_start + i * 10, (i * 7) % 101, (i * 13) % 101, 40, i % 5) for i in range(8640)]
        assert await history.add_samples(record.id, day, day_start + DAY) == 8640

        async def size() -> int:
            def op(conn: sqlite3.Connection) -> int:
                # Bytes in use (cells, their pointers and page headers), not whole pages: the small rollup tables
                # would otherwise count a mostly empty page each.
                row = conn.execute(
                    "SELECT SUM(pgsize - unused) FROM dbstat WHERE name IN ('metric_samples', 'metric_rollups')"
                ).fetchone()
                return int(row[0] or 0)

            return int(await store.db.read(op))

        raw = await size()
        await history.compact(day_start + 3 * DAY)  # the day is now 5-minute rollups
        five_minute = await size()
        await history.compact(day_start + 9 * DAY)  # and now hourly ones
        hourly = await size()
        steady = raw + 6 * five_minute + 23 * hourly  # 1 day raw, 6 days of 5-minute, 23 days of hourly rollups
        with capsys.disabled():
            print(
                f"\nmetric history per runner: raw {raw / 1024:.0f} KiB/day, 5-minute {five_minute / 1024:.1f} KiB/day,"
                f" hourly {hourly / 1024:.1f} KiB/day; 30-day steady state ~{steady / 1024:.0f} KiB"
            )
        assert raw < 256 * 1024
        assert five_minute < 24 * 1024 and hourly < 4 * 1024
        assert steady < 400 * 1024
    finally:
        await store.close()
