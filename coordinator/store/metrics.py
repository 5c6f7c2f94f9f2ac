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
What does not depend on the engine (the records, the bucket and retention maths, the uptime cache, the compaction
loop) is ``coordinator.store.metric_history``, shared with the PostgreSQL store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import partial

from coordinator.store.metric_history import (
    COLUMNS,
    FIVE_MINUTES,
    HOUR,
    RAW_AGGREGATES,
    RAW_AS_ROLLUP,
    ROLLUP_AGGREGATES,
    ROLLUP_VALUES,
    SCALE,
    SERIES,
    SLOT,
    TERMINAL_STATUSES,
    Bucket,
    Compaction,
    Cutoffs,
    History,
    JobTiming,
    MetricHistory,
    Retention,
    SampleRow,
    SlotWindow,
)
from shared.sqlite import Database

__all__ = ["MIGRATION", "SCALE", "SERIES", "Bucket", "Compaction", "History", "JobTiming", "MetricsStore", "Retention"]

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


def _runner_seq(conn: sqlite3.Connection, runner_id: str) -> int | None:
    row = conn.execute("SELECT seq FROM runners WHERE id = ?", (runner_id,)).fetchone()
    return int(row[0]) if row else None


_TERMINAL = "(" + ", ".join(f"'{status}'" for status in TERMINAL_STATUSES) + ")"
_MERGE = ", ".join(
    f"{c}_sum = {c}_sum + excluded.{c}_sum, {c}_max = MAX({c}_max, excluded.{c}_max)" for c in COLUMNS.values()
)
_ROLLUP_INSERT = f"INSERT INTO metric_rollups (runner, width, ts, samples, slots, {ROLLUP_VALUES})"


def _history(conn: sqlite3.Connection, runner_id: str, start: float, end: float, resolution: int) -> History | None:
    seq = _runner_seq(conn, runner_id)
    if seq is None:
        return None
    rows = conn.execute(
        f"""
        WITH data(ts, samples, {ROLLUP_VALUES}) AS (
            SELECT ts / 1000, 1, {RAW_AS_ROLLUP} FROM metric_samples
            WHERE runner = :seq AND ts BETWEEN :start_ms AND :end_ms
            UNION ALL
            SELECT ts, samples, {ROLLUP_VALUES} FROM metric_rollups
            WHERE runner = :seq AND ts BETWEEN :start AND :end
        )
        SELECT (ts / :res) * :res AS bucket, SUM(samples), {ROLLUP_AGGREGATES} FROM data GROUP BY bucket ORDER BY bucket
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
    jobs = conn.execute(
        f"SELECT COUNT(*) FROM jobs WHERE runner_id = ? AND status IN {_TERMINAL} AND completed_at BETWEEN ? AND ?",
        (runner_id, start, end),
    ).fetchone()[0]
    return History([Bucket.of_row(row) for row in rows], int(jobs))


def _slots(conn: sqlite3.Connection, runner_id: str, window: SlotWindow) -> tuple[set[int], dict[int, int]] | None:
    seq = _runner_seq(conn, runner_id)
    if seq is None:
        return None
    low, high = window.low, window.high
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
    hourly = {
        int(row[0]): int(row[1])
        for row in conn.execute(
            "SELECT ts, slots FROM metric_rollups WHERE runner = ? AND width = ? AND ts >= ? AND ts < ?",
            (seq, HOUR, low // HOUR * HOUR, high),
        )
    }
    return present, hourly


def _compact_runner(conn: sqlite3.Connection, seq: int, cutoffs: Cutoffs) -> Compaction:
    done = Compaction()
    # Raw samples → 5-minute rollups, whole buckets only (the cutoff is aligned). A bucket that already exists
    # (a sample that arrived late) absorbs the new ones.
    conn.execute(
        f"{_ROLLUP_INSERT} SELECT ?, {FIVE_MINUTES}, ts / {FIVE_MINUTES * 1000} * {FIVE_MINUTES}, COUNT(*), 1,"
        f" {RAW_AGGREGATES} FROM metric_samples WHERE runner = ? AND ts < ? GROUP BY ts / {FIVE_MINUTES * 1000}"
        f" ON CONFLICT (runner, width, ts) DO UPDATE SET samples = samples + excluded.samples, {_MERGE}",
        (seq, seq, cutoffs.raw_before_ms),
    )
    done.raw_rolled = conn.execute(
        "DELETE FROM metric_samples WHERE runner = ? AND ts < ?", (seq, cutoffs.raw_before_ms)
    ).rowcount
    # 5-minute rollups → hourly ones; an hourly rollup remembers how many 5-minute slots it holds (for uptime).
    conn.execute(
        f"{_ROLLUP_INSERT} SELECT ?, {HOUR}, ts / {HOUR} * {HOUR}, SUM(samples), COUNT(*), {ROLLUP_AGGREGATES}"
        f" FROM metric_rollups WHERE runner = ? AND width = {FIVE_MINUTES} AND ts < ? GROUP BY ts / {HOUR}"
        " ON CONFLICT (runner, width, ts) DO UPDATE SET samples = samples + excluded.samples,"
        f" slots = MIN({HOUR // SLOT}, slots + excluded.slots), {_MERGE}",
        (seq, seq, cutoffs.five_before),
    )
    done.five_minute_rolled = conn.execute(
        "DELETE FROM metric_rollups WHERE runner = ? AND width = ? AND ts < ?",
        (seq, FIVE_MINUTES, cutoffs.five_before),
    ).rowcount
    done.expired = conn.execute(
        "DELETE FROM metric_rollups WHERE runner = ? AND width = ? AND ts < ?", (seq, HOUR, cutoffs.expire_before)
    ).rowcount
    return done


class MetricsStore(MetricHistory):
    """The metric tables, on the same :class:`~shared.sqlite.Database` as the rest of the SQLite store."""

    def __init__(self, db: Database, retention: Retention | None = None) -> None:
        super().__init__(retention)
        self.db = db

    # --- storage hooks -------------------------------------------------------------------------------------

    async def _insert(self, rows: Sequence[SampleRow]) -> int:
        def op(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO metric_samples (runner, ts, cpu, memory, disk, jobs)"
                " SELECT seq, ?, ?, ?, ?, ? FROM runners WHERE id = ?",
                rows,
            )
            return conn.total_changes - before

        return await self.db.run(op)

    async def _slots(self, runner_id: str, window: SlotWindow) -> tuple[set[int], dict[int, int]] | None:
        return await self.db.read(partial(_slots, runner_id=runner_id, window=window))

    async def _runner_keys(self) -> list[int]:
        return await self.db.read(lambda conn: [int(r[0]) for r in conn.execute("SELECT seq FROM runners")])

    async def _compact_runner(self, runner: int, cutoffs: Cutoffs) -> Compaction:
        return await self.db.run(partial(_compact_runner, seq=runner, cutoffs=cutoffs))

    # --- queries -------------------------------------------------------------------------------------------

    async def history(self, runner_id: str, start: float, end: float, resolution: int) -> History | None:
        return await self.db.read(partial(_history, runner_id=runner_id, start=start, end=end, resolution=resolution))

    async def registry_counts(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
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
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT event_seq FROM runners WHERE id = ?", (runner_id,)).fetchone()
            return int(row[0]) if row else 0

        return await self.db.read(op)
