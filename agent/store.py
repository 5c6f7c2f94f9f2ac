"""The agent's own SQLite: its job queue and records, and the outbox of events not yet acknowledged."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from shared.models import JobAssignment
from shared.sqlite import Database

MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL UNIQUE,
        runner_id TEXT NOT NULL,
        assignment TEXT NOT NULL,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        received_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_open ON jobs(status, seq);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        runner_id TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
    # Entries the coordinator refused (see agent.shipping.Shipper), kept for a person to look at.
    """
    CREATE TABLE quarantine (
        seq INTEGER PRIMARY KEY,
        runner_id TEXT NOT NULL,
        body TEXT NOT NULL,
        code TEXT NOT NULL,
        reason TEXT NOT NULL,
        quarantined_at REAL NOT NULL
    )
    """,
]


@dataclass
class StoredJob:
    job_id: str
    assignment: JobAssignment
    status: str
    attempt: int
    resume_step: int | None = None
    """Set after a restart when the executor re-attached to the running attempt: the step to go on with."""


class AgentStore:
    def __init__(self, path: Path) -> None:
        self.db = Database(path, MIGRATIONS)

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def add_job(self, assignment: JobAssignment) -> tuple[StoredJob, bool]:
        """Store a delivered job; a second delivery of the same id returns the stored one and ``False``."""

        def op(conn: sqlite3.Connection) -> tuple[StoredJob, bool]:
            row = conn.execute("SELECT status, attempt FROM jobs WHERE job_id = ?", (assignment.job_id,)).fetchone()
            if row is not None:
                return StoredJob(assignment.job_id, assignment, row["status"], row["attempt"]), False
            now = time.time()
            conn.execute(
                "INSERT INTO jobs (job_id, runner_id, assignment, status, received_at, updated_at)"
                " VALUES (?, ?, ?, 'queued', ?, ?)",
                (assignment.job_id, assignment.runner_id, assignment.model_dump_json(), now, now),
            )
            return StoredJob(assignment.job_id, assignment, "queued", 0), True

        return await self.db.run(op)

    async def open_jobs(self) -> list[StoredJob]:
        """Jobs not finished yet, in arrival order (for resuming after a restart)."""

        def op(conn: sqlite3.Connection) -> list[StoredJob]:
            rows = conn.execute(
                "SELECT job_id, assignment, status, attempt FROM jobs WHERE status IN ('queued', 'running')"
                " ORDER BY seq"
            ).fetchall()
            return [
                StoredJob(r["job_id"], JobAssignment.model_validate_json(r["assignment"]), r["status"], r["attempt"])
                for r in rows
            ]

        return await self.db.read(op)

    async def job_status(self, job_id: str) -> tuple[str, int] | None:
        def op(conn: sqlite3.Connection) -> tuple[str, int] | None:
            row = conn.execute("SELECT status, attempt FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            return (row["status"], row["attempt"]) if row else None

        return await self.db.read(op)

    async def pending_events(self, runner_id: str, limit: int) -> list[tuple[int, str]]:
        def op(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            rows = conn.execute(
                "SELECT seq, body FROM outbox WHERE runner_id = ? ORDER BY seq LIMIT ?", (runner_id, limit)
            ).fetchall()
            return [(int(r["seq"]), str(r["body"])) for r in rows]

        return await self.db.read(op)

    async def acknowledge(self, runner_id: str, upto: int) -> None:
        await self.db.run(
            lambda conn: conn.execute("DELETE FROM outbox WHERE runner_id = ? AND seq <= ?", (runner_id, upto))
        )

    async def forget_runner(self, runner_id: str) -> int:
        """Drop the events and open jobs of a runner the coordinator no longer knows."""

        def op(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM outbox WHERE runner_id = ?", (runner_id,))
            return conn.execute(
                "UPDATE jobs SET status = 'cancelled' WHERE runner_id = ? AND status IN ('queued', 'running')",
                (runner_id,),
            ).rowcount

        return await self.db.run(op)

    async def setting(self, key: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            return str(row["value"]) if row else None

        return await self.db.read(op)

    async def set_setting(self, key: str, value: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        await self.db.run(op)
