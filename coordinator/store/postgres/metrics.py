"""Metric history on PostgreSQL: the same three tiers as the SQLite store (``coordinator.store.metrics``), the
same tables and columns, the engine-neutral maths shared (``coordinator.store.metric_history``).

What differs is what several coordinators writing one database need:

- A compaction step moves rows with one statement (``DELETE … RETURNING`` feeding the ``INSERT … ON CONFLICT``
  merge): the delete is the gate, so a row is rolled up by whichever pass deleted it, once, even when two
  coordinators compact the same runner at once (the second waits for the first's row locks and then finds the
  rows gone); and a sample another coordinator stores meanwhile is either moved with its bucket or left for the
  next pass, never deleted without being rolled up.
- A batch of samples is one ``INSERT … SELECT FROM unnest(…)`` in (runner, time) order, so concurrent batches
  take their row locks in the same order.
- Reads that combine tiers are single statements, so they see one snapshot even while a compaction commits.

Each coordinator keeps its own uptime cache; a sample stored through another coordinator reaches it within the
cache's TTL (:data:`~coordinator.store.metric_history.UPTIME_CACHE_TTL`).
"""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.store.metric_history import (
    COLUMNS,
    FIVE_MINUTES,
    HOUR,
    RAW_AGGREGATES,
    RAW_AS_ROLLUP,
    ROLLUP_AGGREGATES,
    ROLLUP_VALUES,
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
from coordinator.store.postgres.database import Connection, PostgresDatabase
from coordinator.store.postgres.sql import affected

_MERGE = ", ".join(
    f"{c}_sum = r.{c}_sum + excluded.{c}_sum, {c}_max = GREATEST(r.{c}_max, excluded.{c}_max)" for c in COLUMNS.values()
)
_ROLLUP_INSERT = f"INSERT INTO metric_rollups AS r (runner, width, ts, samples, slots, {ROLLUP_VALUES})"

_INSERT_SAMPLES = """
INSERT INTO metric_samples (runner, ts, cpu, memory, disk, jobs)
SELECT r.seq, s.ts, s.cpu, s.memory, s.disk, s.jobs
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[])
    WITH ORDINALITY AS s(ts, cpu, memory, disk, jobs, runner_id, n)
JOIN runners r ON r.id = s.runner_id
ORDER BY s.n
ON CONFLICT (runner, ts) DO NOTHING
"""
_HISTORY = f"""
WITH data(ts, samples, {ROLLUP_VALUES}) AS (
    SELECT ts / 1000, 1, {RAW_AS_ROLLUP} FROM metric_samples
    WHERE runner = $1 AND ts BETWEEN $2 AND $3
    UNION ALL
    SELECT ts, samples, {ROLLUP_VALUES} FROM metric_rollups
    WHERE runner = $1 AND ts BETWEEN $4::double precision AND $5::double precision
)
SELECT (ts / $6::bigint) * $6::bigint AS bucket, SUM(samples), {ROLLUP_AGGREGATES}
FROM data GROUP BY bucket ORDER BY bucket
"""
_SLOTS = f"""
SELECT ts / 1000 / {SLOT} AS slot, NULL::bigint AS slots FROM metric_samples
WHERE runner = $1 AND ts >= $2::bigint * 1000 AND ts < $3::bigint * 1000
UNION
SELECT ts / {SLOT}, NULL FROM metric_rollups WHERE runner = $1 AND width = {FIVE_MINUTES} AND ts >= $2 AND ts < $3
UNION ALL
SELECT ts, slots FROM metric_rollups WHERE runner = $1 AND width = {HOUR} AND ts >= $4 AND ts < $3
"""
"""One snapshot of the window's slots: rows without ``slots`` are slots with samples (raw or 5-minute), rows with
it are hourly rollups (start, slots)."""
_RAW_TO_FIVE_MINUTES = f"""
WITH moved AS (
    DELETE FROM metric_samples WHERE runner = $1 AND ts < $2 RETURNING ts, {", ".join(COLUMNS.values())}
), rolled AS (
    {_ROLLUP_INSERT}
    SELECT $1, {FIVE_MINUTES}, ts / {FIVE_MINUTES * 1000} * {FIVE_MINUTES}, COUNT(*), 1, {RAW_AGGREGATES}
    FROM moved GROUP BY ts / {FIVE_MINUTES * 1000}
    ON CONFLICT (runner, width, ts) DO UPDATE SET samples = r.samples + excluded.samples, {_MERGE}
)
SELECT COUNT(*) FROM moved
"""
_FIVE_MINUTES_TO_HOURLY = f"""
WITH moved AS (
    DELETE FROM metric_rollups WHERE runner = $1 AND width = {FIVE_MINUTES} AND ts < $2
    RETURNING ts, samples, {ROLLUP_VALUES}
), rolled AS (
    {_ROLLUP_INSERT}
    SELECT $1, {HOUR}, ts / {HOUR} * {HOUR}, SUM(samples), COUNT(*), {ROLLUP_AGGREGATES}
    FROM moved GROUP BY ts / {HOUR}
    ON CONFLICT (runner, width, ts) DO UPDATE SET samples = r.samples + excluded.samples,
        slots = LEAST({HOUR // SLOT}, r.slots + excluded.slots), {_MERGE}
)
SELECT COUNT(*) FROM moved
"""


async def _runner_seq(conn: Connection, runner_id: str) -> int | None:
    seq = await conn.fetchval("SELECT seq FROM runners WHERE id = $1", runner_id)
    return None if seq is None else int(seq)


class PostgresMetricsStore(MetricHistory):
    """The metric tables on a :class:`~coordinator.store.postgres.database.PostgresDatabase`."""

    def __init__(self, db: PostgresDatabase, retention: Retention | None = None) -> None:
        super().__init__(retention)
        self.db = db

    # --- storage hooks -------------------------------------------------------------------------------------

    async def _insert(self, rows: Sequence[SampleRow]) -> int:
        ordered = sorted(rows, key=lambda row: (row[5], row[0]))
        columns = [list(column) for column in zip(*ordered, strict=True)]
        async with self.db.transaction() as conn:
            return affected(await conn.execute(_INSERT_SAMPLES, *columns))

    async def _slots(self, runner_id: str, window: SlotWindow) -> tuple[set[int], dict[int, int]] | None:
        async with self.db.connection() as conn:
            seq = await _runner_seq(conn, runner_id)
            if seq is None:
                return None
            rows = await conn.fetch(_SLOTS, seq, window.low, window.high, window.low // HOUR * HOUR)
        present = {int(row[0]) for row in rows if row[1] is None}
        hourly = {int(row[0]): int(row[1]) for row in rows if row[1] is not None}
        return present, hourly

    async def _runner_keys(self) -> list[int]:
        async with self.db.connection() as conn:
            return [int(row[0]) for row in await conn.fetch("SELECT seq FROM runners ORDER BY seq")]

    async def _compact_runner(self, runner: int, cutoffs: Cutoffs) -> Compaction:
        async with self.db.transaction() as conn:
            # Raw samples → 5-minute rollups, whole buckets only (the cutoff is aligned); a bucket that already
            # exists (a sample that arrived late) absorbs the new ones.
            raw = await conn.fetchval(_RAW_TO_FIVE_MINUTES, runner, cutoffs.raw_before_ms)
            # 5-minute rollups → hourly ones, which remember how many 5-minute slots they hold (for uptime).
            five = await conn.fetchval(_FIVE_MINUTES_TO_HOURLY, runner, cutoffs.five_before)
            expired = await conn.execute(
                "DELETE FROM metric_rollups WHERE runner = $1 AND width = $2 AND ts < $3",
                runner,
                HOUR,
                cutoffs.expire_before,
            )
        return Compaction(int(raw), int(five), affected(expired))

    # --- queries -------------------------------------------------------------------------------------------

    async def history(self, runner_id: str, start: float, end: float, resolution: int) -> History | None:
        async with self.db.connection() as conn:
            seq = await _runner_seq(conn, runner_id)
            if seq is None:
                return None
            rows = await conn.fetch(
                _HISTORY, seq, int(start * 1000), int(end * 1000), float(start), float(end), resolution
            )
            jobs = await conn.fetchval(
                "SELECT COUNT(*) FROM jobs WHERE runner_id = $1 AND status = ANY($2::text[])"
                " AND completed_at BETWEEN $3 AND $4",
                runner_id,
                list(TERMINAL_STATUSES),
                float(start),
                float(end),
            )
        return History([Bucket.of_row(row) for row in rows], int(jobs))

    async def registry_counts(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        async with self.db.connection() as conn:
            runners = await conn.fetch("SELECT status, type, COUNT(*) FROM runners GROUP BY status, type")
            jobs = await conn.fetch(
                "SELECT status, COUNT(*) FROM jobs WHERE status IN ('queued', 'running') GROUP BY status"
            )
        return {(str(r[0]), str(r[1])): int(r[2]) for r in runners}, {str(r[0]): int(r[1]) for r in jobs}

    async def job_timings(self, job_ids: Sequence[str]) -> list[JobTiming]:
        if not job_ids:
            return []
        ids = list(job_ids)
        async with self.db.connection() as conn:
            jobs = await conn.fetch("SELECT id, status, started_at, completed_at FROM jobs WHERE id = ANY($1)", ids)
            steps = await conn.fetch(
                "SELECT job_id, status, completed_at - started_at FROM job_steps WHERE job_id = ANY($1)"
                " AND started_at IS NOT NULL AND completed_at IS NOT NULL ORDER BY job_id, attempt, idx",
                ids,
            )
        timings: dict[str, JobTiming] = {}
        for row in jobs:
            started, completed = row[2], row[3]
            duration = completed - started if started is not None and completed is not None else None
            timings[row[0]] = JobTiming(row[1], duration)
        for row in steps:
            timings[row[0]].steps.append((str(row[1]), max(0.0, float(row[2]))))
        return list(timings.values())

    async def event_mark(self, runner_id: str) -> int:
        async with self.db.connection() as conn:
            mark = await conn.fetchval("SELECT event_seq FROM runners WHERE id = $1", runner_id)
        return 0 if mark is None else int(mark)
