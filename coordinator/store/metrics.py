"""Metric history in the coordinator's SQLite: the load samples agents send, their rollups, and the queries behind
``GET /runners/{id}/metrics``, ``statistics.uptime_percentage`` and the Prometheus gauges.

Three tiers, and every sample lives in exactly one of them at a time, so a query simply adds them up:

- ``metric_samples``: one row per sample, for ``raw_retention`` (24 h);
- ``metric_rollups`` of width 300: count, sums and maxima per 5-minute bucket, for ``five_minute_retention`` (7 d);
- ``metric_rollups`` of width 3600: the same per hour, until ``retention`` (30 d), then deleted.

Compaction moves whole buckets down a tier in one transaction per runner (so it never holds the database for
long), which bounds the rows per runner at about 8,640 + 1,700 + 550 at a 10 s sample interval. Rows are kept
small: the runner is its integer row key rather than its 43-character id, and percentages are integer tenths
(the agents round to 0.1 anyway), which SQLite packs into two bytes instead of an eight-byte REAL. Measured
(``tests/coordinator/test_metrics_history.py``): about 190 KiB per runner for a day of raw samples, 11 KiB once
rolled into 5-minute buckets, 1 KiB as hourly ones: about 280 KiB per runner in the steady state.

Averages are weighted by sample count (a rollup's sum and count carry over exactly), maxima survive as maxima.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import structlog

from coordinator.config import MetricsHistory
from shared.models import MetricSample
from shared.sqlite import Database

log = structlog.get_logger(__name__)

SLOT = 300
"""Uptime is counted in 5-minute slots: one with any sample (raw or rolled up) counts as active."""
FIVE_MINUTES = 300
HOUR = 3600
MAX_CLOCK_SKEW = 300.0
"""Samples stamped further than this in the future are refused (an agent with a wrong clock)."""
TERMINAL = "('completed', 'failed', 'timed_out', 'cancelled')"
UPTIME_CACHE_TTL = 60.0
"""Seconds an uptime figure is served from memory: it counts 5-minute slots, and new samples drop it."""
UPTIME_CACHE_SIZE = 20_000
SERIES = ("cpu_usage", "memory_usage", "disk_usage", "active_jobs")

MIGRATION = """
CREATE TABLE metric_samples (
    runner INTEGER NOT NULL REFERENCES runners(seq) ON DELETE CASCADE,
    ts INTEGER NOT NULL,
    cpu INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    disk INTEGER NOT NULL,
    jobs INTEGER NOT NULL,
    PRIMARY KEY (runner, ts)
) WITHOUT ROWID;
CREATE TABLE metric_rollups (
    runner INTEGER NOT NULL REFERENCES runners(seq) ON DELETE CASCADE,
    width INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    slots INTEGER NOT NULL,
    cpu_sum INTEGER NOT NULL,
    cpu_max INTEGER NOT NULL,
    memory_sum INTEGER NOT NULL,
    memory_max INTEGER NOT NULL,
    disk_sum INTEGER NOT NULL,
    disk_max INTEGER NOT NULL,
    jobs_sum INTEGER NOT NULL,
    jobs_max INTEGER NOT NULL,
    PRIMARY KEY (runner, width, ts)
) WITHOUT ROWID
"""
"""Schema of the tiers (``ts``: milliseconds for raw samples, the bucket's start in seconds for rollups)."""


@dataclass(frozen=True)
class Retention:
    """How long each tier keeps data, in seconds."""

    raw: float = 24 * 3600.0
    five_minute: float = 7 * 86400.0
    total: float = 30 * 86400.0

    @classmethod
    def of(cls, settings: MetricsHistory) -> Retention:
        return cls(
            raw=settings.raw_retention_hours * 3600,
            five_minute=settings.five_minute_retention_days * 86400,
            total=settings.retention_days * 86400,
        )


@dataclass
class Bucket:
    """Sums and maxima are in stored units (tenths): divide by :data:`SCALE`."""

    start: int
    """Epoch seconds, aligned to the resolution."""
    samples: int
    sums: dict[str, int]
    maxima: dict[str, int]

    def average(self, name: str) -> float:
        return self.sums[name] / self.samples


@dataclass
class History:
    buckets: list[Bucket]
    jobs_executed: int

    @property
    def samples(self) -> int:
        return sum(b.samples for b in self.buckets)

    def average(self, name: str) -> float | None:
        count = self.samples
        return sum(b.sums[name] for b in self.buckets) / count if count else None

    def maximum(self, name: str) -> float | None:
        return max((b.maxima[name] for b in self.buckets), default=None)


@dataclass
class Compaction:
    raw_rolled: int = 0
    five_minute_rolled: int = 0
    expired: int = 0


@dataclass
class JobTiming:
    status: str
    duration: float | None
    steps: list[tuple[str, float]] = field(default_factory=list)
    """(status, seconds) of every step of every attempt that started and ended."""


# Stored values are integer tenths (of a percent; active jobs are stored as tenths too, so one scale fits all).
_COLUMNS = {"cpu_usage": "cpu", "memory_usage": "memory", "disk_usage": "disk", "active_jobs": "jobs"}
SCALE = 10


def _tenths(value: float) -> int:
    return round(value * SCALE)


def _runner_seq(conn: sqlite3.Connection, runner_id: str) -> int | None:
    row = conn.execute("SELECT seq FROM runners WHERE id = ?", (runner_id,)).fetchone()
    return int(row[0]) if row else None


_AGGREGATES = ", ".join(f"SUM({c}_sum), MAX({c}_max)" for c in _COLUMNS.values())
_RAW_AS_ROLLUP = ", ".join(f"{c}, {c}" for c in _COLUMNS.values())
_ROLLUP_VALUES = ", ".join(f"{c}_sum, {c}_max" for c in _COLUMNS.values())
_RAW_AGGREGATES = ", ".join(f"SUM({c}), MAX({c})" for c in _COLUMNS.values())
_MERGE = ", ".join(
    f"{c}_sum = {c}_sum + excluded.{c}_sum, {c}_max = MAX({c}_max, excluded.{c}_max)" for c in _COLUMNS.values()
)
_ROLLUP_INSERT = f"INSERT INTO metric_rollups (runner, width, ts, samples, slots, {_ROLLUP_VALUES})"


def _history(conn: sqlite3.Connection, runner_id: str, start: float, end: float, resolution: int) -> History | None:
    seq = _runner_seq(conn, runner_id)
    if seq is None:
        return None
    rows = conn.execute(
        f"""
        WITH data(ts, samples, {_ROLLUP_VALUES}) AS (
            SELECT ts / 1000, 1, {_RAW_AS_ROLLUP} FROM metric_samples
            WHERE runner = :seq AND ts BETWEEN :start_ms AND :end_ms
            UNION ALL
            SELECT ts, samples, {_ROLLUP_VALUES} FROM metric_rollups
            WHERE runner = :seq AND ts BETWEEN :start AND :end
        )
        SELECT (ts / :res) * :res AS bucket, SUM(samples), {_AGGREGATES} FROM data GROUP BY bucket ORDER BY bucket
        """,
        {
            "seq": seq,
            "start_ms": int(start * 1000),
            "end_ms": int(end * 1000),
            "start": start,
            "end": end,
            "res": resolution,
        },
    ).fetchall()
    buckets = []
    for row in rows:
        sums = {name: int(row[2 + 2 * i]) for i, name in enumerate(_COLUMNS)}
        maxima = {name: int(row[3 + 2 * i]) for i, name in enumerate(_COLUMNS)}
        buckets.append(Bucket(int(row[0]), int(row[1]), sums, maxima))
    jobs = conn.execute(
        f"SELECT COUNT(*) FROM jobs WHERE runner_id = ? AND status IN {TERMINAL} AND completed_at BETWEEN ? AND ?",
        (runner_id, start, end),
    ).fetchone()[0]
    return History(buckets, int(jobs))


def _uptime(conn: sqlite3.Connection, runner_id: str, start: float, now: float) -> float:
    seq = _runner_seq(conn, runner_id)
    if seq is None:
        return 0.0
    first, last = int(start // SLOT), int(now // SLOT)
    low, high = first * SLOT, (last + 1) * SLOT
    present = {
        int(row[0])
        for row in conn.execute(
            "SELECT DISTINCT ts / 1000 / ? FROM metric_samples WHERE runner = ? AND ts >= ? AND ts < ?",
            (SLOT, seq, low * 1000, high * 1000),
        )
    }
    present.update(
        int(row[0])
        for row in conn.execute(
            "SELECT ts / ? FROM metric_rollups WHERE runner = ? AND width = ? AND ts >= ? AND ts < ?",
            (SLOT, seq, FIVE_MINUTES, low, high),
        )
    )
    # An hourly rollup says how many of its 5-minute slots had samples, not which: the hour that holds the
    # window's start counts whole (there are no samples before registration; at the 30-day edge it is at most
    # 11 slots of 8,640).
    hourly = {
        int(row[0]): int(row[1])
        for row in conn.execute(
            "SELECT ts, slots FROM metric_rollups WHERE runner = ? AND width = ? AND ts >= ? AND ts < ?",
            (seq, HOUR, low // HOUR * HOUR, high),
        )
    }

    def has_samples(slot: int) -> bool:
        return slot in present or slot * SLOT // HOUR * HOUR in hourly

    total = last - first + 1
    # The slots at either end are only partly inside the window (registration, now): they count when they hold a
    # sample, and are left out otherwise, so a runner is not charged for the minutes before its first sample.
    if not has_samples(first):
        total -= 1
    if last != first and not has_samples(last):
        total -= 1
    if total <= 0:
        return 0.0
    return round(min(100.0, 100.0 * (len(present) + sum(hourly.values())) / total), 2)


def _compact_runner(
    conn: sqlite3.Connection, seq: int, raw_before_ms: int, five_before: int, expire_before: int
) -> Compaction:
    done = Compaction()
    # Raw samples → 5-minute rollups, whole buckets only (the cutoff is aligned). A bucket that already exists
    # (a sample that arrived late) absorbs the new ones.
    conn.execute(
        f"{_ROLLUP_INSERT} SELECT ?, {FIVE_MINUTES}, ts / {FIVE_MINUTES * 1000} * {FIVE_MINUTES}, COUNT(*), 1,"
        f" {_RAW_AGGREGATES} FROM metric_samples WHERE runner = ? AND ts < ? GROUP BY ts / {FIVE_MINUTES * 1000}"
        f" ON CONFLICT (runner, width, ts) DO UPDATE SET samples = samples + excluded.samples, {_MERGE}",
        (seq, seq, raw_before_ms),
    )
    done.raw_rolled = conn.execute(
        "DELETE FROM metric_samples WHERE runner = ? AND ts < ?", (seq, raw_before_ms)
    ).rowcount
    # 5-minute rollups → hourly ones; an hourly rollup remembers how many 5-minute slots it holds (for uptime).
    conn.execute(
        f"{_ROLLUP_INSERT} SELECT ?, {HOUR}, ts / {HOUR} * {HOUR}, SUM(samples), COUNT(*), {_AGGREGATES}"
        f" FROM metric_rollups WHERE runner = ? AND width = {FIVE_MINUTES} AND ts < ? GROUP BY ts / {HOUR}"
        " ON CONFLICT (runner, width, ts) DO UPDATE SET samples = samples + excluded.samples,"
        f" slots = MIN({HOUR // SLOT}, slots + excluded.slots), {_MERGE}",
        (seq, seq, five_before),
    )
    done.five_minute_rolled = conn.execute(
        "DELETE FROM metric_rollups WHERE runner = ? AND width = ? AND ts < ?", (seq, FIVE_MINUTES, five_before)
    ).rowcount
    done.expired = conn.execute(
        "DELETE FROM metric_rollups WHERE runner = ? AND width = ? AND ts < ?", (seq, HOUR, expire_before)
    ).rowcount
    return done


class MetricsStore:
    """The metric tables, on the same :class:`~shared.sqlite.Database` as the rest of the SQLite store."""

    def __init__(self, db: Database, retention: Retention | None = None) -> None:
        self.db = db
        self.retention = retention or Retention()
        # Uptime per runner, read on every ``GET /runners/{id}``: kept for UPTIME_CACHE_TTL seconds (it counts
        # 5-minute slots) and dropped when the runner's samples arrive.
        self._uptime: dict[str, tuple[float, float]] = {}

    # --- samples -------------------------------------------------------------------------------------------

    async def add_samples(self, runner_id: str, samples: Sequence[MetricSample], now: float) -> int:
        """Store samples; ones already stored (a resent heartbeat), too old to keep, or from the future are
        skipped. Returns how many were new."""
        return await self.add_sample_batch([(runner_id, samples, now)])

    async def add_sample_batch(self, batch: Sequence[tuple[str, Sequence[MetricSample], float]]) -> int:
        """The samples of many heartbeats (runner id, samples, when received) in one transaction."""
        rows: list[tuple[int, int, int, int, int, str]] = []
        for runner_id, samples, now in batch:
            oldest, newest = now - self.retention.total, now + MAX_CLOCK_SKEW
            rows.extend(
                (
                    int(s.at.timestamp() * 1000),
                    _tenths(s.cpu_usage),
                    _tenths(s.memory_usage),
                    _tenths(s.disk_usage),
                    s.active_jobs * SCALE,
                    runner_id,
                )
                for s in samples
                if oldest <= s.at.timestamp() <= newest
            )
        if not rows:
            return 0

        def op(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO metric_samples (runner, ts, cpu, memory, disk, jobs)"
                " SELECT seq, ?, ?, ?, ?, ? FROM runners WHERE id = ?",
                rows,
            )
            return conn.total_changes - before

        added = await self.db.run(op)
        for runner_id, _, _ in batch:
            self._uptime.pop(runner_id, None)
        return added

    # --- queries -------------------------------------------------------------------------------------------

    async def history(self, runner_id: str, start: float, end: float, resolution: int) -> History | None:
        """Buckets of ``resolution`` seconds (aligned to the epoch) holding data in [start, end], and the jobs that
        finished then. ``None`` for an unknown runner. Older data answers at the resolution it was kept in."""
        return await self.db.read(partial(_history, runner_id=runner_id, start=start, end=end, resolution=resolution))

    async def uptime_percentage(self, runner_id: str, registered_at: float, now: float) -> float:
        """Share of the retention window (or the time since registration, if shorter) with samples."""
        cached = self._uptime.get(runner_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        start = max(registered_at, now - self.retention.total)
        value = await self.db.read(partial(_uptime, runner_id=runner_id, start=start, now=now))
        if len(self._uptime) > UPTIME_CACHE_SIZE:
            self._uptime.clear()
        self._uptime[runner_id] = (time.monotonic() + UPTIME_CACHE_TTL, value)
        return value

    # --- compaction ----------------------------------------------------------------------------------------

    async def compact_forever(self, interval: float) -> None:
        """Compact now and then every ``interval`` seconds (the app owns this task and cancels it on shutdown)."""
        while True:
            try:
                done = await self.compact(time.time())
                if done.raw_rolled or done.five_minute_rolled or done.expired:
                    log.info(
                        "metric history compacted",
                        raw_rolled=done.raw_rolled,
                        five_minute_rolled=done.five_minute_rolled,
                        expired=done.expired,
                    )
            except Exception:
                log.exception("metric history compaction failed; retrying at the next interval")
            await asyncio.sleep(interval)

    async def compact(self, now: float) -> Compaction:
        raw_before_ms = int((now - self.retention.raw) // FIVE_MINUTES * FIVE_MINUTES) * 1000
        five_before = int((now - self.retention.five_minute) // HOUR * HOUR)
        expire_before = int(now - self.retention.total) // HOUR * HOUR  # whole hours past retention only
        runners = await self.db.read(lambda conn: [int(r[0]) for r in conn.execute("SELECT seq FROM runners")])
        total = Compaction()
        for seq in runners:
            done = await self.db.run(
                partial(
                    _compact_runner,
                    seq=seq,
                    raw_before_ms=raw_before_ms,
                    five_before=five_before,
                    expire_before=expire_before,
                )
            )
            total.raw_rolled += done.raw_rolled
            total.five_minute_rolled += done.five_minute_rolled
            total.expired += done.expired
        return total

    # --- what the Prometheus collector and counters read ---------------------------------------------------

    async def registry_counts(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """Runners by (status, type) and open jobs (queued, running) by status, counted now."""

        def op(conn: sqlite3.Connection) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
            runners = {
                (str(r[0]), str(r[1])): int(r[2])
                for r in conn.execute("SELECT status, type, COUNT(*) FROM runners GROUP BY status, type")
            }
            jobs = {
                str(r[0]): int(r[1])
                for r in conn.execute(
                    "SELECT status, COUNT(*) FROM jobs WHERE status IN ('queued', 'running') GROUP BY status"
                )
            }
            return runners, jobs

        return await self.db.read(op)

    async def job_timings(self, job_ids: Sequence[str]) -> list[JobTiming]:
        """Status and run time of finished jobs, with their steps' run times."""
        if not job_ids:
            return []
        marks = ", ".join("?" for _ in job_ids)

        def op(conn: sqlite3.Connection) -> list[JobTiming]:
            timings: dict[str, JobTiming] = {}
            jobs = conn.execute(f"SELECT id, status, started_at, completed_at FROM jobs WHERE id IN ({marks})", job_ids)
            for row in jobs:
                started, completed = row[2], row[3]
                duration = completed - started if started is not None and completed is not None else None
                timings[row[0]] = JobTiming(row[1], duration)
            for row in conn.execute(
                f"SELECT job_id, status, completed_at - started_at FROM job_steps WHERE job_id IN ({marks})"
                " AND started_at IS NOT NULL AND completed_at IS NOT NULL",
                job_ids,
            ):
                timings[row[0]].steps.append((str(row[1]), max(0.0, float(row[2]))))
            return list(timings.values())

        return await self.db.read(op)

    async def event_mark(self, runner_id: str) -> int:
        """The runner's applied-event high-water mark (0 for an unknown runner)."""

        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT event_seq FROM runners WHERE id = ?", (runner_id,)).fetchone()
            return int(row[0]) if row else 0

        return await self.db.read(op)
