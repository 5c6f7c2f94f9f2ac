"""Jobs submitted to the fleet, on PostgreSQL: the held pool and each routed job's assignment, with the same
tables and meaning as the SQLite store (``coordinator.store.fleet``).

Several coordinators share the pool, so every change of a routed job is guarded by its state in the statement
itself rather than by a read before it:

- :meth:`PostgresFleetStore.assign` takes a held job with ``UPDATE … WHERE runner_id IS NULL AND status =
  'queued'``: of two coordinators assigning the same job, the second waits for the first's row lock, finds the
  row no longer held, and gets ``None``; a job is assigned once.
- :meth:`PostgresFleetStore.release` deletes only ``jobs`` rows no agent has taken (``delivered = 0``), in the
  statement that re-checks it under the row lock, so a delivery committed by another coordinator is never undone.
"""

from __future__ import annotations

from coordinator.sealing import Sealer
from coordinator.store.base import JobRecord, QueueState, StatusChange
from coordinator.store.fleet_records import (
    ALL_JOBS,
    OPEN_STATUSES,
    FleetJob,
    JobQuery,
    JobRow,
    fleet_job,
    job_row,
    stored_tags,
)
from coordinator.store.postgres.database import PostgresDatabase
from coordinator.store.postgres.sql import affected, has_tags, numbered
from coordinator.store.rows import stored_spec, where_clause

_HELD = "runner_id IS NULL AND status = 'queued'"
_RELEASE = """
WITH taken_back AS (
    DELETE FROM jobs j USING fleet_jobs f
    WHERE f.id = j.id AND f.runner_id = $1 AND j.runner_id = $1 AND j.delivered = 0 AND j.status = 'queued'
    RETURNING j.id
), held_again AS (
    UPDATE fleet_jobs SET runner_id = NULL, assigned_at = NULL
    WHERE id IN (SELECT id FROM taken_back) RETURNING id, seq
)
SELECT id FROM held_again ORDER BY seq
"""


class PostgresFleetStore:
    def __init__(self, db: PostgresDatabase, sealer: Sealer | None = None) -> None:
        self.db = db
        self._sealer = sealer
        """Encrypts masked values in stored specs, as the job index does (see ``coordinator.sealing``)."""

    async def insert(self, job: FleetJob) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO fleet_jobs (id, name, spec, tags, tag_set, type, status, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7)",
                job.id,
                job.spec.name,
                stored_spec(job.spec, self._sealer),
                stored_tags(job.tags),
                job.tag_set,
                job.type,
                job.created_at,
            )

    async def get(self, job_id: str) -> FleetJob | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow("SELECT * FROM fleet_jobs WHERE id = $1", job_id)
        return fleet_job(row, self._sealer) if row else None

    async def held(self, limit: int, after: int = 0) -> list[FleetJob]:
        """Held jobs, oldest first, from just after the one numbered ``after``."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT * FROM fleet_jobs WHERE {_HELD} AND seq > $1 ORDER BY seq LIMIT $2", after, limit
            )
        return [fleet_job(row, self._sealer) for row in rows]

    async def held_by_tag_set(self) -> dict[str, int]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(f"SELECT tag_set, COUNT(*) AS n FROM fleet_jobs WHERE {_HELD} GROUP BY tag_set")
        return {str(row["tag_set"]): int(row["n"]) for row in rows}

    async def open_counts(self) -> dict[str, int]:
        """Queued and running jobs by runner (what takes a runner's slots)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT runner_id, COUNT(*) AS n FROM jobs WHERE status = ANY($1::text[]) GROUP BY runner_id",
                list(OPEN_STATUSES),
            )
        return {str(row["runner_id"]): int(row["n"]) for row in rows}

    async def assign(self, job: FleetJob, runner_id: str, now: float) -> tuple[JobRecord, QueueState] | None:
        """Give a held job to ``runner_id``: its ``jobs`` row is written; ``None`` if it is no longer held (another
        coordinator took or cancelled it first). Also returns what was queued and running on the runner just
        before it (for its start-time estimate)."""
        async with self.db.transaction() as conn:
            taken = await conn.execute(
                f"UPDATE fleet_jobs SET runner_id = $1, assigned_at = $2 WHERE id = $3 AND {_HELD}",
                runner_id,
                now,
                job.id,
            )
            if not affected(taken):
                return None
            ahead = await conn.fetchval(
                "SELECT COUNT(*) FROM jobs WHERE runner_id = $1 AND status = 'queued'", runner_id
            )
            running = await conn.fetch(
                "SELECT COALESCE(started_at, created_at) FROM jobs WHERE runner_id = $1 AND status = 'running'",
                runner_id,
            )
            await conn.execute(
                "INSERT INTO jobs (id, runner_id, name, spec, status, created_at)"
                " VALUES ($1, $2, $3, $4, 'queued', $5)",
                job.id,
                runner_id,
                job.spec.name,
                stored_spec(job.spec, self._sealer),
                job.created_at,
            )
        record = JobRecord(id=job.id, runner_id=runner_id, spec=job.spec, status="queued", created_at=job.created_at)
        return record, QueueState(int(ahead), [float(row[0]) for row in running])

    async def release(self, runner_id: str) -> list[str]:
        """Put the runner's routed jobs that no agent has taken back in the pool; returns their ids."""
        async with self.db.transaction() as conn:
            return [str(row["id"]) for row in await conn.fetch(_RELEASE, runner_id)]

    async def forget_runner(self, runner_id: str) -> int:
        """A deleted runner's routed jobs go with it, as its runner-addressed ones do (its open jobs were
        cancelled before it could be deleted)."""
        async with self.db.transaction() as conn:
            done = await conn.execute(
                "DELETE FROM fleet_jobs f WHERE f.runner_id = $1"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = f.id AND j.runner_id = $1)",
                runner_id,
            )
        return affected(done)

    async def cancel_held(self, job_id: str, reason: str, now: float) -> StatusChange | None:
        async with self.db.transaction() as conn:
            done = await conn.execute(
                f"UPDATE fleet_jobs SET status = 'cancelled', reason = $1, completed_at = $2 WHERE id = $3 AND {_HELD}",
                reason,
                now,
                job_id,
            )
        return StatusChange("job", job_id, "", "queued", "cancelled", now) if affected(done) else None

    async def list(self, query: JobQuery, limit: int, offset: int) -> tuple[list[JobRow], int]:
        portable, params = where_clause({"status": query.status, "runner_id": query.runner_id}, query.tags, has_tags)
        clause = numbered(portable)
        page = f"LIMIT ${len(params) + 1} OFFSET ${len(params) + 2}"
        async with self.db.connection() as conn:
            total = await conn.fetchval(f"SELECT COUNT(*) FROM ({ALL_JOBS} {clause}) AS matching", *params)
            # Ties in time are ordered by id byte by byte ("C"), as SQLite compares text.
            rows = await conn.fetch(
                f'{ALL_JOBS} {clause} ORDER BY created_at DESC, id COLLATE "C" {page}', *params, limit, offset
            )
        return [job_row(row) for row in rows], int(total)
