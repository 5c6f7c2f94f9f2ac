"""Metric history at the store, on both engines: buckets, resent samples, compaction, late samples, uptime,
the counts the Prometheus collector reads, and compaction from two coordinators at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from coordinator.store.metric_history import MetricHistory
from shared.models import MetricSample
from shared.timeutil import from_epoch
from tests.store import engines
from tests.store.engines import Engine

engine = engines.engine
HOUR, DAY = 3600, 86400


def sample(at: float, cpu: float, memory: float, disk: float = 20.0, jobs: int = 0) -> MetricSample:
    return MetricSample(at=from_epoch(at), cpu_usage=cpu, memory_usage=memory, disk_usage=disk, active_jobs=jobs)


async def tiers(engine: Engine, runner_id: str) -> dict[str, tuple[int, float | None, float | None]]:
    seq = await engine.value("SELECT seq FROM runners WHERE id = ?", runner_id)
    raw = (await engine.rows("SELECT COUNT(*), MIN(ts), MAX(ts) FROM metric_samples WHERE runner = ?", seq))[0]
    out = {"raw": (int(raw[0]), raw[1] and raw[1] / 1000, raw[2] and raw[2] / 1000)}
    for width, name in ((300, "5m"), (3600, "1h")):
        row = (
            await engine.rows(
                "SELECT COUNT(*), MIN(ts), MAX(ts) FROM metric_rollups WHERE runner = ? AND width = ?", seq, width
            )
        )[0]
        out[name] = (int(row[0]), row[1], row[2])
    return out


async def test_buckets_are_aligned_sums_and_maxima_in_tenths(engine: Engine) -> None:
    history = engine.metrics()
    runner_id = await engine.add_runner(time.time())
    now = time.time()
    t0 = (now - 3000) // 300 * 300
    batch = [
        sample(t0 + 10, cpu=10, memory=40, jobs=1),
        sample(t0 + 70, cpu=20, memory=50, jobs=2),
        sample(t0 + 130, cpu=60, memory=60, jobs=3),
        sample(t0 + 301, cpu=5.5, memory=10.1, disk=30),
        sample(t0 + 302, cpu=7.5, memory=20.3, disk=30),
        sample(now - 2 * HOUR, cpu=99, memory=99, disk=99, jobs=9),
    ]
    assert await history.add_samples(runner_id, batch, now) == 6
    found = await history.history(runner_id, now - HOUR, now, 300)
    assert found is not None
    assert [(b.start, b.samples) for b in found.buckets] == [(t0, 3), (t0 + 300, 2)]
    first, second = found.buckets
    assert first.sums == {"cpu_usage": 900, "memory_usage": 1500, "disk_usage": 600, "active_jobs": 60}
    assert first.maxima == {"cpu_usage": 600, "memory_usage": 600, "disk_usage": 200, "active_jobs": 30}
    assert (second.average("cpu_usage"), second.average("memory_usage")) == (65.0, 152.0)
    assert found.average("cpu_usage") == 206.0 and found.maximum("cpu_usage") == 600
    minutes = await history.history(runner_id, now - HOUR, now, 60)
    assert minutes is not None and [b.start for b in minutes.buckets] == [t0, t0 + 60, t0 + 120, t0 + 300]
    day = await history.history(runner_id, now - DAY, now, HOUR)
    assert day is not None and day.samples == 6 and day.maximum("cpu_usage") == 990
    assert await history.history("no-such-runner", now - HOUR, now, 60) is None


async def test_resent_old_and_future_samples_and_unknown_runners_are_not_stored(engine: Engine) -> None:
    history = engine.metrics()
    runner_id = await engine.add_runner(time.time())
    now = time.time()
    batch = [sample(now - 20, 1, 1), sample(now - 10, 2, 2)]
    assert await history.add_samples(runner_id, batch, now) == 2
    assert await history.add_samples(runner_id, batch, now) == 0
    assert await history.add_samples(runner_id, [sample(now - 31 * DAY, 1, 1), sample(now + HOUR, 1, 1)], now) == 0
    assert await history.add_samples("no-such-runner", [sample(now - 5, 1, 1)], now) == 0
    other = await engine.add_runner(time.time())
    # Many heartbeats in one batch, one of them resent, two samples of one heartbeat at the same instant.
    mixed = [
        (other, [sample(now - 3, 1, 1), sample(now - 3, 9, 9), sample(now - 2, 1, 1)], now),
        (runner_id, batch, now),
    ]
    assert await history.add_sample_batch(mixed) == 2
    found = await history.history(runner_id, now - 60, now, 60)
    assert found is not None and found.samples == 2


async def test_jobs_executed_counts_jobs_that_ended_in_the_period(engine: Engine) -> None:
    history = engine.metrics()
    now = time.time()
    runner_id = await engine.add_runner(now - DAY)
    for status, ended in (("completed", now - 600), ("failed", now - 1800), ("timed_out", now - 2 * DAY)):
        await engine.add_job(runner_id, status, ended - 70, ended - 60, ended)
    await engine.add_job(runner_id, "running", now - 70, now - 60)
    for period, expected in ((HOUR, 2), (DAY, 2), (7 * DAY, 3)):
        found = await history.history(runner_id, now - period, now, 300)
        assert found is not None and found.jobs_executed == expected, period


async def test_compaction_keeps_averages_and_maxima_and_bounds_each_tier(engine: Engine) -> None:
    history = engine.metrics()
    now = time.time()
    runner_id = await engine.add_runner(now - 40 * DAY)
    synthetic = [
        sample(now - 31 * DAY + i * 600, cpu=(i * 7) % 101, memory=(i * 13) % 101, disk=50, jobs=i % 4)
        for i in range(31 * 144)
    ]
    older = [s for s in synthetic if s.at.timestamp() < now - 2 * DAY]
    stored = await history.add_samples(runner_id, older, now - 2 * DAY)
    stored += await history.add_samples(runner_id, synthetic[len(older) :], now)
    assert stored == len(synthetic)
    first_full_hour = (now - 30 * DAY) // HOUR * HOUR + HOUR

    async def buckets(resolution: int, since: float) -> list[tuple[int, int, dict[str, int], dict[str, int]]]:
        found = await history.history(runner_id, now - 30 * DAY, now, resolution)
        assert found is not None
        return [(b.start, b.samples, b.sums, b.maxima) for b in found.buckets if b.start >= since]

    hourly_before = await buckets(HOUR, first_full_hour)
    five_minute_before = await buckets(300, now - 7 * DAY + HOUR)
    uptime_before = await history.uptime_percentage(runner_id, now - 40 * DAY, now)

    done = await history.compact(now)
    assert done.raw_rolled > 0 and done.five_minute_rolled > 0 and done.expired > 0
    found = await tiers(engine, runner_id)
    raw_count, raw_oldest, _ = found["raw"]
    assert raw_count and raw_oldest is not None and raw_oldest >= (now - DAY) // 300 * 300
    five_count, five_oldest, five_newest = found["5m"]
    assert five_count and five_oldest is not None and five_newest is not None
    assert five_oldest >= (now - 7 * DAY) // HOUR * HOUR and five_newest < now - DAY
    hourly_count, hourly_oldest, hourly_newest = found["1h"]
    assert hourly_count and hourly_oldest is not None and hourly_newest is not None
    assert hourly_oldest >= now - 30 * DAY - HOUR and hourly_newest < now - 7 * DAY
    assert raw_count + five_count + hourly_count < len(synthetic)

    assert await buckets(HOUR, first_full_hour) == hourly_before
    assert await buckets(300, now - 7 * DAY + HOUR) == five_minute_before
    fresh = engine.metrics()  # no cached uptime
    assert await fresh.uptime_percentage(runner_id, now - 40 * DAY, now) == pytest.approx(uptime_before, abs=0.1)
    again = await history.compact(now)
    assert (again.raw_rolled, again.five_minute_rolled, again.expired) == (0, 0, 0)


async def test_a_sample_that_arrives_after_its_bucket_was_rolled_up_joins_the_rollup(engine: Engine) -> None:
    history = engine.metrics()
    now = time.time()
    runner_id = await engine.add_runner(now - 3 * DAY)
    bucket = (now - 2 * DAY) // 300 * 300
    await history.add_samples(runner_id, [sample(bucket + 10, cpu=10, memory=30)], now)
    await history.compact(now)
    await history.add_samples(runner_id, [sample(bucket + 20, cpu=30, memory=20)], now)
    await history.compact(now)
    found_tiers = await tiers(engine, runner_id)
    assert (found_tiers["raw"][0], found_tiers["5m"][0]) == (0, 1)
    found = await history.history(runner_id, bucket, bucket + 299, 300)
    assert found is not None
    assert [(b.start, b.samples) for b in found.buckets] == [(bucket, 2)]
    assert (found.average("cpu_usage"), found.maximum("cpu_usage")) == (200.0, 300)
    assert (found.average("memory_usage"), found.maximum("memory_usage")) == (250.0, 300)


async def test_deleting_a_runner_deletes_its_history(engine: Engine) -> None:
    history = engine.metrics()
    now = time.time()
    runner_id = await engine.add_runner(now - 3 * DAY)
    await history.add_samples(runner_id, [sample(now - 2 * DAY, 1, 1), sample(now - 60, 2, 2)], now)
    await history.compact(now)
    count = "SELECT (SELECT COUNT(*) FROM metric_samples) + (SELECT COUNT(*) FROM metric_rollups)"
    assert await engine.value(count) == 2
    await engine.execute("DELETE FROM runners WHERE id = ?", runner_id)
    assert await engine.value(count) == 0


async def test_uptime_is_the_share_of_slots_with_samples_since_registration_within_30_days(engine: Engine) -> None:
    now = time.time()
    registered = now // 300 * 300 - 10 * DAY
    runner_id = await engine.add_runner(registered)
    await engine.metrics().add_samples(runner_id, [sample(registered + i * 60, 5, 5) for i in range(5 * 1440)], now)
    history = engine.metrics()
    assert await history.uptime_percentage(runner_id, registered, now) == 50.0
    await history.compact(now)
    assert await engine.metrics().uptime_percentage(runner_id, registered, now) == 50.0

    old = await engine.add_runner(now - 90 * DAY)
    await history.add_samples(old, [sample(now - 3 * DAY + i * 60, 5, 5) for i in range(3 * 1440)], now)
    assert await history.uptime_percentage(old, now - 90 * DAY, now) == pytest.approx(10.0, abs=0.05)
    silent = await engine.add_runner(now - HOUR)
    assert await history.uptime_percentage(silent, now - HOUR, now) == 0.0
    assert await history.uptime_percentage("no-such-runner", now - HOUR, now) == 0.0


async def test_registry_counts_job_timings_and_the_event_mark(engine: Engine) -> None:
    history = engine.metrics()
    now = time.time()
    first = await engine.add_runner(now)
    await engine.add_runner(now, status="inactive")
    await engine.add_runner(now, type="docker")
    await engine.add_job(first, "queued", now)
    running = await engine.add_job(first, "running", now, now)
    done = await engine.add_job(first, "completed", now - 10, now - 8, now - 2)
    await engine.execute(
        "INSERT INTO job_steps (job_id, attempt, idx, name, status, started_at, completed_at)"
        " VALUES (?, 1, 0, 'build', 'completed', ?, ?), (?, 1, 1, 'test', 'failed', ?, NULL)",
        done,
        now - 8,
        now - 5,
        done,
        now - 5,
    )
    await engine.execute("UPDATE runners SET event_seq = 41 WHERE id = ?", first)

    runners, jobs = await history.registry_counts()
    assert runners == {("active", "native"): 1, ("inactive", "native"): 1, ("active", "docker"): 1}
    assert jobs == {"queued": 1, "running": 1}
    timings = {t.status: t for t in await history.job_timings([done, running])}
    assert timings["completed"].duration == pytest.approx(6.0)
    assert timings["completed"].steps == [("completed", pytest.approx(3.0))]
    assert timings["running"].duration is None and timings["running"].steps == []
    assert await history.job_timings([]) == []
    assert (await history.event_mark(first), await history.event_mark("no-such-runner")) == (41, 0)


async def test_two_coordinators_compacting_at_once_roll_each_sample_up_once(engine: Engine) -> None:
    """Compaction through two handles on one database (two coordinators' pools on PostgreSQL): the rollups hold
    every sample exactly once."""
    now = time.time()
    runners = [await engine.add_runner(now - 3 * DAY) for _ in range(4)]
    writer = engine.metrics()
    for runner_id in runners:
        await writer.add_samples(runner_id, [sample(now - 2 * DAY + i * 10, 10, 10) for i in range(360)], now)
    async with engine.another() as second:
        stores: list[MetricHistory] = [engine.metrics(), second.metrics()]
        results = await asyncio.gather(*(store.compact(now) for store in stores))
    assert sum(r.raw_rolled for r in results) == 4 * 360
    for runner_id in runners:
        found = await writer.history(runner_id, now - 3 * DAY, now, HOUR)
        assert found is not None and found.samples == 360
        assert (await tiers(engine, runner_id))["raw"][0] == 0
