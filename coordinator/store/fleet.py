"""Jobs submitted to the fleet (``POST /api/jobs``): the held pool and each routed job's assignment.

A routed job has one row in ``fleet_jobs`` from its submission on: its tags, its runner type, and the runner it
is assigned to (``NULL`` while it is held). While held it exists only here; once assigned it also has its row in
``jobs`` under that runner, which from then on carries its status like any runner-addressed job's. Going back to
the pool deletes that ``jobs`` row again, in the same transaction and only while no agent has taken the job
(``delivered = 0``), so an accepted job never moves.

The queries behind ``GET /api/jobs`` read both tables: every ``jobs`` row (routed or not) plus the held ones.
"""

from __future__ import annotations

import sqlite3

from coordinator.sealing import Sealer
from coordinator.store.base import JobRecord, QueueState, StatusChange
from coordinator.store.fleet_records import (
    ALL_JOBS,
    FleetJob,
    JobQuery,
    JobRow,
    fleet_job,
    job_row,
    stored_tags,
    tag_set,
)
from coordinator.store.rows import stored_spec, where_clause
from shared.models import JobSubmission
from shared.sqlite import Database, has_tags

__all__ = ["MIGRATION", "FleetJob", "FleetStore", "JobQuery", "JobRow", "tag_set"]

MIGRATION = """
CREATE TABLE fleet_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    tags TEXT NOT NULL,
    tag_set TEXT NOT NULL,
    type TEXT,
    runner_id TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    assigned_at REAL,
    completed_at REAL
);
CREATE INDEX fleet_jobs_held ON fleet_jobs(seq) WHERE runner_id IS NULL AND status = 'queued';
CREATE INDEX fleet_jobs_runner ON fleet_jobs(runner_id)
"""


class FleetStore:
    def __init__(self, db: Database, sealer: Sealer | None = None) -> None:
        self.db = db
        self._sealer = sealer
        """Encrypts masked values in stored specs, as the job index does (see ``coordinator.sealing``)."""

    def _stored_spec(self, spec: JobSubmission) -> str:
        return stored_spec(spec, self._sealer)

    async def insert(self, job: FleetJob) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO fleet_jobs (id, name, spec, tags, tag_set, type, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                (
                    job.id,
                    job.spec.name,
                    self._stored_spec(job.spec),
                    stored_tags(job.tags),
                    job.tag_set,
                    job.type,
                    job.created_at,
                ),
            )

        await self.db.run(op)

    async def get(self, job_id: str) -> FleetJob | None:
        def op(conn: sqlite3.Connection) -> FleetJob | None:
            row = conn.execute("SELECT * FROM fleet_jobs WHERE id = ?", (job_id,)).fetchone()
            return fleet_job(row, self._sealer) if row else None

        return await self.db.read(op)

    async def held(self, limit: int, after: int = 0) -> list[FleetJob]:
        """Held jobs, oldest first, from just after the one numbered ``after``."""

        def op(conn: sqlite3.Connection) -> list[FleetJob]:
            rows = conn.execute(
                "SELECT * FROM fleet_jobs WHERE runner_id IS NULL AND status = 'queued' AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            return [fleet_job(r, self._sealer) for r in rows]

        return await self.db.read(op)

    async def held_by_tag_set(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT tag_set, COUNT(*) AS n FROM fleet_jobs WHERE runner_id IS NULL AND status = 'queued'"
                " GROUP BY tag_set"
            ).fetchall()
            return {str(r["tag_set"]): int(r["n"]) for r in rows}

        return await self.db.read(op)

    async def open_counts(self) -> dict[str, int]:
        """Queued and running jobs by runner (what takes a runner's slots)."""

        def op(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT runner_id, COUNT(*) AS n FROM jobs WHERE status IN ('queued', 'running') GROUP BY runner_id"
            ).fetchall()
            return {str(r["runner_id"]): int(r["n"]) for r in rows}

        return await self.db.read(op)

    async def assign(self, job: FleetJob, runner_id: str, now: float) -> tuple[JobRecord, QueueState] | None:
        """Give a held job to ``runner_id``: its ``jobs`` row is written; ``None`` if it is no longer held. Also
        returns what was queued and running on the runner just before it (for its start-time estimate)."""

        def op(conn: sqlite3.Connection) -> tuple[JobRecord, QueueState] | None:
            taken = conn.execute(
                "UPDATE fleet_jobs SET runner_id = ?, assigned_at = ? WHERE id = ? AND runner_id IS NULL"
                " AND status = 'queued'",
                (runner_id, now, job.id),
            ).rowcount
            if not taken:
                return None
            ahead = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE runner_id = ? AND status = 'queued'", (runner_id,)
            ).fetchone()[0]
            running = conn.execute(
                "SELECT COALESCE(started_at, created_at) FROM jobs WHERE runner_id = ? AND status = 'running'",
                (runner_id,),
            ).fetchall()
            conn.execute(
                "INSERT INTO jobs (id, runner_id, name, spec, status, created_at) VALUES (?, ?, ?, ?, 'queued', ?)",
                (job.id, runner_id, job.spec.name, self._stored_spec(job.spec), job.created_at),
            )
            record = JobRecord(
                id=job.id, runner_id=runner_id, spec=job.spec, status="queued", created_at=job.created_at
            )
            return record, QueueState(int(ahead), [float(r[0]) for r in running])

        return await self.db.run(op)

    async def release(self, runner_id: str) -> list[str]:
        """Put the runner's routed jobs that no agent has taken back in the pool; returns their ids."""

        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT j.id FROM jobs j JOIN fleet_jobs f ON f.id = j.id"
                " WHERE f.runner_id = ? AND j.runner_id = ? AND j.delivered = 0 AND j.status = 'queued'",
                (runner_id, runner_id),
            ).fetchall()
            released = [str(r["id"]) for r in rows]
            for job_id in released:
                conn.execute("DELETE FROM jobs WHERE id = ? AND delivered = 0 AND status = 'queued'", (job_id,))
                conn.execute("UPDATE fleet_jobs SET runner_id = NULL, assigned_at = NULL WHERE id = ?", (job_id,))
            return released

        return await self.db.run(op)

    async def forget_runner(self, runner_id: str) -> int:
        """A deleted runner's routed jobs go with it, as its runner-addressed ones do (its open jobs were
        cancelled before it could be deleted)."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM fleet_jobs WHERE runner_id = ? AND id NOT IN (SELECT id FROM jobs WHERE runner_id = ?)",
                (runner_id, runner_id),
            ).rowcount

        return await self.db.run(op)

    async def cancel_held(self, job_id: str, reason: str, now: float) -> StatusChange | None:
        def op(conn: sqlite3.Connection) -> StatusChange | None:
            done = conn.execute(
                "UPDATE fleet_jobs SET status = 'cancelled', reason = ?, completed_at = ?"
                " WHERE id = ? AND runner_id IS NULL AND status = 'queued'",
                (reason, now, job_id),
            ).rowcount
            return StatusChange("job", job_id, "", "queued", "cancelled", now) if done else None

        return await self.db.run(op)

    async def list(self, query: JobQuery, limit: int, offset: int) -> tuple[list[JobRow], int]:
        clause, params = where_clause({"status": query.status, "runner_id": query.runner_id}, query.tags, has_tags)

        def op(conn: sqlite3.Connection) -> tuple[list[JobRow], int]:
            total = conn.execute(f"SELECT COUNT(*) FROM ({ALL_JOBS} {clause})", params).fetchone()[0]
            rows = conn.execute(
                f"{ALL_JOBS} {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?", [*params, limit, offset]
            ).fetchall()
            return [job_row(r) for r in rows], int(total)

        return await self.db.read(op)
