"""The embedded default store: one SQLite file in WAL mode, schema versioned by ``PRAGMA user_version``."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.store import metrics as metrics_schema
from coordinator.store.base import (
    AttemptRecord,
    JobRecord,
    QueueState,
    RunnerFilter,
    RunnerRecord,
    Statistics,
    StatusChange,
    StepRecord,
)
from shared.models import TERMINAL_JOB_STATUSES, AgentEvent, CurrentLoad, JobEvent, JobSubmission, StepEvent
from shared.sqlite import Database

MIGRATIONS: list[str] = [
    # 1: registry and job index
    """
    CREATE TABLE runners (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        capabilities TEXT NOT NULL,
        tags TEXT NOT NULL,
        metadata TEXT NOT NULL,
        resources TEXT NOT NULL,
        token TEXT NOT NULL,
        registered_at REAL NOT NULL,
        last_seen REAL NOT NULL,
        last_heartbeat REAL,
        heartbeat_interval REAL NOT NULL,
        load TEXT NOT NULL,
        updated_at REAL,
        event_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runners_status ON runners(status, type);
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        runner_id TEXT NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        reason TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        completed_at REAL,
        delivered INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_runner ON jobs(runner_id, seq);
    CREATE INDEX jobs_runner_status ON jobs(runner_id, status);
    CREATE INDEX jobs_undelivered ON jobs(runner_id, delivered, seq) WHERE delivered = 0;
    CREATE TABLE job_attempts (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        reason TEXT,
        started_at REAL,
        completed_at REAL,
        PRIMARY KEY (job_id, attempt)
    );
    CREATE TABLE job_steps (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        started_at REAL,
        completed_at REAL,
        PRIMARY KEY (job_id, attempt, idx)
    )
    """,
    # 2: log entries, by the runner's outbox sequence
    """
    CREATE TABLE log_entries (
        runner_id TEXT NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        ts REAL NOT NULL,
        level INTEGER NOT NULL,
        message TEXT NOT NULL,
        job_id TEXT,
        step TEXT,
        stream TEXT NOT NULL,
        attempt INTEGER,
        PRIMARY KEY (runner_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX log_entries_job ON log_entries(job_id, seq);
    CREATE INDEX log_entries_time ON log_entries(runner_id, ts)
    """,
    # 3: metric history: raw load samples and their rollups (see coordinator/store/metrics.py)
    metrics_schema.MIGRATION,
]

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}

RUNNER_CACHE_TTL = 2.0
RUNNER_CACHE_SIZE = 10_000

OPEN_STATUSES = ("queued", "running")


def _runner(row: sqlite3.Row) -> RunnerRecord:
    return RunnerRecord(
        id=row["id"],
        name=row["name"],
        type=row["type"],
        status=row["status"],
        host=row["host"],
        port=row["port"],
        token=row["token"],
        registered_at=row["registered_at"],
        last_seen=row["last_seen"],
        last_heartbeat=row["last_heartbeat"],
        heartbeat_interval=row["heartbeat_interval"],
        capabilities=json.loads(row["capabilities"]),
        tags=json.loads(row["tags"]),
        metadata=json.loads(row["metadata"]),
        resources=json.loads(row["resources"]),
        load=CurrentLoad.model_validate_json(row["load"]),
        updated_at=row["updated_at"],
    )


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        runner_id=row["runner_id"],
        spec=JobSubmission.model_validate_json(row["spec"]),
        status=row["status"],
        created_at=row["created_at"],
        attempt=row["attempt"],
        exit_code=row["exit_code"],
        reason=row["reason"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        delivered=bool(row["delivered"]),
    )


_RUNNER_COLUMNS: dict[str, Callable[[Any], Any]] = {
    "name": lambda v: v,
    "host": lambda v: v,
    "port": lambda v: v,
    "status": lambda v: v,
    "capabilities": json.dumps,
    "tags": json.dumps,
    "metadata": json.dumps,
    "resources": json.dumps,
    "token": lambda v: v,
    "heartbeat_interval": lambda v: v,
    "last_seen": lambda v: v,
}


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.db = Database(path, MIGRATIONS)
        # Runners by id, read far more often (every submit, every delivery) than written. Every write to a
        # runner row goes through this class and forgets the entry; the TTL bounds what another coordinator
        # sharing a replicated database could change unseen.
        self._runners: dict[str, tuple[float, RunnerRecord]] = {}
        self._generation = 0

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    # --- runners -------------------------------------------------------------------------------------------

    async def insert_runner(self, runner: RunnerRecord) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO runners (id, name, type, status, host, port, capabilities, tags, metadata, resources,"
                " token, registered_at, last_seen, heartbeat_interval, load)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    runner.id,
                    runner.name,
                    runner.type,
                    runner.status,
                    runner.host,
                    runner.port,
                    json.dumps(runner.capabilities),
                    json.dumps(runner.tags),
                    json.dumps(runner.metadata),
                    json.dumps(runner.resources),
                    runner.token,
                    runner.registered_at,
                    runner.last_seen,
                    runner.heartbeat_interval,
                    runner.load.model_dump_json(),
                ),
            )

        await self.db.run(op)

    async def get_runner(self, runner_id: str) -> RunnerRecord | None:
        cached = self._runners.get(runner_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        generation = self._generation

        def op(conn: sqlite3.Connection) -> RunnerRecord | None:
            row = conn.execute("SELECT * FROM runners WHERE id = ?", (runner_id,)).fetchone()
            return _runner(row) if row else None

        runner = await self.db.read(op)
        # Cache only if no runner was written while the read was in flight (it could predate that write).
        if runner is not None and generation == self._generation:
            if len(self._runners) > RUNNER_CACHE_SIZE:
                self._runners.clear()
            self._runners[runner_id] = (time.monotonic() + RUNNER_CACHE_TTL, runner)
        return runner

    def _forget(self, *runner_ids: str) -> None:
        self._generation += 1
        for runner_id in runner_ids:
            self._runners.pop(runner_id, None)

    async def token_owner(self, token: str) -> str | None:
        """The id of the runner ``token`` belongs to, if any."""

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT id FROM runners WHERE token = ?", (token,)).fetchone()
            return str(row["id"]) if row else None

        return await self.db.read(op)

    async def list_runners(
        self, filters: RunnerFilter, limit: int | None, offset: int
    ) -> tuple[list[RunnerRecord], int]:
        where: list[str] = []
        params: list[Any] = []
        if filters.status:
            where.append("status = ?")
            params.append(filters.status)
        if filters.type:
            where.append("type = ?")
            params.append(filters.type)
        wanted = sorted(set(filters.tags))
        if wanted:
            marks = ", ".join("?" for _ in wanted)
            where.append(f"(SELECT COUNT(DISTINCT value) FROM json_each(runners.tags) WHERE value IN ({marks})) = ?")
            params.extend([*wanted, len(wanted)])
        clause = f"WHERE {' AND '.join(where)}" if where else ""

        def op(conn: sqlite3.Connection) -> tuple[list[RunnerRecord], int]:
            total = conn.execute(f"SELECT COUNT(*) FROM runners {clause}", params).fetchone()[0]
            rows = conn.execute(
                f"SELECT * FROM runners {clause} ORDER BY seq LIMIT ? OFFSET ?",
                [*params, -1 if limit is None else limit, offset],
            ).fetchall()
            return [_runner(r) for r in rows], int(total)

        return await self.db.read(op)

    async def update_runner(self, runner_id: str, changes: dict[str, Any], now: float) -> RunnerRecord | None:
        unknown = set(changes) - set(_RUNNER_COLUMNS)
        if unknown:
            raise ValueError(f"not runner columns: {sorted(unknown)}")

        def op(conn: sqlite3.Connection) -> RunnerRecord | None:
            if changes:
                sets = ", ".join(f"{column} = ?" for column in changes)
                values = [_RUNNER_COLUMNS[c](v) for c, v in changes.items()]
                conn.execute(f"UPDATE runners SET {sets}, updated_at = ? WHERE id = ?", [*values, now, runner_id])
            row = conn.execute("SELECT * FROM runners WHERE id = ?", (runner_id,)).fetchone()
            return _runner(row) if row else None

        result = await self.db.run(op)
        self._forget(runner_id)  # after the write: see get_runner
        return result

    async def delete_runner(self, runner_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM runners WHERE id = ?", (runner_id,)).rowcount > 0

        result = await self.db.run(op)
        self._forget(runner_id)  # after the write: see get_runner
        return result

    async def record_heartbeat(
        self, runner_id: str, load: CurrentLoad, status: str, interval: float, now: float
    ) -> StatusChange | None:
        def op(conn: sqlite3.Connection) -> StatusChange | None:
            row = conn.execute("SELECT status FROM runners WHERE id = ?", (runner_id,)).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE runners SET status = ?, load = ?, heartbeat_interval = ?, last_seen = ?, last_heartbeat = ?"
                " WHERE id = ?",
                (status, load.model_dump_json(), interval, now, now, runner_id),
            )
            return StatusChange("runner", runner_id, runner_id, row["status"], status, now)

        result = await self.db.run(op)
        self._forget(runner_id)  # after the write: see get_runner
        return result

    async def mark_stale(self, now: float, multiplier: float) -> list[StatusChange]:
        def op(conn: sqlite3.Connection) -> list[StatusChange]:
            rows = conn.execute(
                "SELECT id, status FROM runners WHERE status != 'inactive' AND last_seen < ? - heartbeat_interval * ?",
                (now, multiplier),
            ).fetchall()
            changes = []
            for row in rows:
                conn.execute("UPDATE runners SET status = 'inactive' WHERE id = ?", (row["id"],))
                changes.append(StatusChange("runner", row["id"], row["id"], row["status"], "inactive", now))
            return changes

        changes = await self.db.run(op)
        self._forget(*(change.runner_id for change in changes))
        return changes

    async def statistics(self, runner_id: str) -> Statistics:
        def op(conn: sqlite3.Connection) -> Statistics:
            row = conn.execute(
                "SELECT COUNT(*) AS total,"
                " SUM(status = 'completed') AS ok,"
                " SUM(status IN ('failed', 'timed_out')) AS bad,"
                " AVG(CASE WHEN started_at IS NOT NULL THEN completed_at - started_at END) AS avg_time"
                " FROM jobs WHERE runner_id = ? AND status IN ('completed', 'failed', 'timed_out', 'cancelled')",
                (runner_id,),
            ).fetchone()
            return Statistics(
                total_jobs_executed=int(row["total"] or 0),
                successful_jobs=int(row["ok"] or 0),
                failed_jobs=int(row["bad"] or 0),
                average_execution_time=round(float(row["avg_time"] or 0.0), 3),
            )

        return await self.db.read(op)

    # --- jobs ----------------------------------------------------------------------------------------------

    async def insert_job(self, job: JobRecord) -> QueueState:
        def op(conn: sqlite3.Connection) -> QueueState:
            # What is ahead of the new job, read in the same transaction (for its start-time estimate).
            ahead = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE runner_id = ? AND status = 'queued'", (job.runner_id,)
            ).fetchone()[0]
            running = conn.execute(
                "SELECT COALESCE(started_at, created_at) FROM jobs WHERE runner_id = ? AND status = 'running'",
                (job.runner_id,),
            ).fetchall()
            conn.execute(
                "INSERT INTO jobs (id, runner_id, name, spec, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, job.runner_id, job.spec.name, job.spec.model_dump_json(), job.status, job.created_at),
            )
            return QueueState(int(ahead), [float(r[0]) for r in running])

        return await self.db.run(op)

    async def get_job(self, job_id: str) -> JobRecord | None:
        def op(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            job = _job(row)
            job.steps = [
                StepRecord(s["idx"], s["name"], s["status"], s["exit_code"], s["started_at"], s["completed_at"])
                for s in conn.execute(
                    "SELECT * FROM job_steps WHERE job_id = ? AND attempt = ? ORDER BY idx", (job_id, job.attempt)
                )
            ]
            job.attempts = [
                AttemptRecord(
                    a["attempt"], a["status"], a["exit_code"], a["reason"], a["started_at"], a["completed_at"]
                )
                for a in conn.execute("SELECT * FROM job_attempts WHERE job_id = ? ORDER BY attempt", (job_id,))
            ]
            return job

        return await self.db.read(op)

    async def list_jobs(
        self, runner_id: str, status: str | None, limit: int | None, offset: int
    ) -> tuple[list[JobRecord], int]:
        clause = "WHERE runner_id = ?" + (" AND status = ?" if status else "")
        params: list[Any] = [runner_id, *([status] if status else [])]

        def op(conn: sqlite3.Connection) -> tuple[list[JobRecord], int]:
            total = conn.execute(f"SELECT COUNT(*) FROM jobs {clause}", params).fetchone()[0]
            rows = conn.execute(
                f"SELECT * FROM jobs {clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
                [*params, -1 if limit is None else limit, offset],
            ).fetchall()
            return [_job(r) for r in rows], int(total)

        return await self.db.read(op)

    async def undelivered_jobs(self, runner_id: str, limit: int) -> list[JobRecord]:
        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE runner_id = ? AND delivered = 0 AND status = 'queued' ORDER BY seq LIMIT ?",
                (runner_id, limit),
            ).fetchall()
            return [_job(r) for r in rows]

        return await self.db.read(op)

    async def mark_delivered(self, job_id: str) -> str | None:
        """Record that the agent took the job; returns the job's status (``None`` if it no longer exists)."""

        def op(conn: sqlite3.Connection) -> str | None:
            conn.execute("UPDATE jobs SET delivered = 1 WHERE id = ?", (job_id,))
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return str(row["status"]) if row else None

        return await self.db.run(op)

    async def open_job_count(self, runner_id: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE runner_id = ? AND status IN ('queued', 'running')", (runner_id,)
            ).fetchone()
            return int(row[0])

        return await self.db.read(op)

    async def cancel_open_jobs(self, runner_id: str, reason: str, now: float) -> list[StatusChange]:
        def op(conn: sqlite3.Connection) -> list[StatusChange]:
            rows = conn.execute(
                "SELECT id, status FROM jobs WHERE runner_id = ? AND status IN ('queued', 'running')", (runner_id,)
            ).fetchall()
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', reason = ?, completed_at = ?"
                " WHERE runner_id = ? AND status IN ('queued', 'running')",
                (reason, now, runner_id),
            )
            return [StatusChange("job", r["id"], runner_id, r["status"], "cancelled", now) for r in rows]

        return await self.db.run(op)

    async def cancel_held_job(self, job_id: str, reason: str, now: float) -> StatusChange | None:
        """Cancel a job the coordinator still holds (not yet delivered); ``None`` if an agent has it."""

        def op(conn: sqlite3.Connection) -> StatusChange | None:
            row = conn.execute(
                "SELECT runner_id FROM jobs WHERE id = ? AND status = 'queued' AND delivered = 0", (job_id,)
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', reason = ?, completed_at = ? WHERE id = ?", (reason, now, job_id)
            )
            return StatusChange("job", job_id, row["runner_id"], "queued", "cancelled", now)

        return await self.db.run(op)

    # --- agent events --------------------------------------------------------------------------------------

    async def apply_events(self, runner_id: str, events: list[AgentEvent]) -> tuple[int, list[StatusChange]] | None:
        """Apply the events past the runner's high-water mark, in order, and advance it, atomically.

        Events at or below the mark were applied before (the agent resent them because an acknowledgement was
        lost), so resending is always safe and each event takes effect exactly once.
        """

        def op(conn: sqlite3.Connection) -> tuple[int, list[StatusChange]] | None:
            row = conn.execute("SELECT event_seq FROM runners WHERE id = ?", (runner_id,)).fetchone()
            if row is None:
                return None
            mark = int(row["event_seq"])
            changes: list[StatusChange] = []
            logs: list[tuple[Any, ...]] = []
            for event in sorted(events, key=lambda e: e.seq):
                if event.seq <= mark:
                    continue
                if isinstance(event, JobEvent):
                    change = _apply_job_event(conn, runner_id, event)
                    if change:
                        changes.append(change)
                elif isinstance(event, StepEvent):
                    _apply_step_event(conn, runner_id, event)
                else:
                    logs.append(
                        (
                            runner_id,
                            event.seq,
                            event.at.timestamp(),
                            LEVELS[event.level],
                            event.message,
                            event.job_id,
                            event.step,
                            event.stream,
                            event.attempt,
                        )
                    )
                mark = event.seq
            if logs:
                conn.executemany(
                    "INSERT INTO log_entries (runner_id, seq, ts, level, message, job_id, step, stream, attempt)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    logs,
                )
            conn.execute("UPDATE runners SET event_seq = ? WHERE id = ?", (mark, runner_id))
            return mark, changes

        return await self.db.run(op)


def _apply_job_event(conn: sqlite3.Connection, runner_id: str, event: JobEvent) -> StatusChange | None:
    at = event.at.timestamp()
    row = conn.execute(
        "SELECT status, started_at FROM jobs WHERE id = ? AND runner_id = ?", (event.job_id, runner_id)
    ).fetchone()
    if row is None:
        return None
    terminal = event.status in TERMINAL_JOB_STATUSES and event.final
    # The attempt's own record.
    if event.status == "running":
        conn.execute(
            "INSERT INTO job_attempts (job_id, attempt, status, started_at) VALUES (?, ?, 'running', ?)"
            " ON CONFLICT (job_id, attempt) DO UPDATE SET status = 'running', started_at = excluded.started_at",
            (event.job_id, event.attempt, at),
        )
    elif event.attempt > 0:
        conn.execute(
            "INSERT INTO job_attempts (job_id, attempt, status, exit_code, reason, completed_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt) DO UPDATE SET status = excluded.status,"
            " exit_code = excluded.exit_code, reason = excluded.reason, completed_at = excluded.completed_at",
            (event.job_id, event.attempt, event.status, event.exit_code, event.reason, at),
        )
    old = row["status"]
    if old in TERMINAL_JOB_STATUSES:
        # A job ends in exactly one terminal state: the first one recorded stands.
        return None
    if terminal:
        conn.execute(
            "UPDATE jobs SET status = ?, attempt = MAX(attempt, ?), exit_code = ?, reason = ?, completed_at = ?,"
            " delivered = 1 WHERE id = ?",
            (event.status, event.attempt, event.exit_code, event.reason, at, event.job_id),
        )
    elif event.status not in TERMINAL_JOB_STATUSES:
        conn.execute(
            "UPDATE jobs SET status = ?, attempt = ?, started_at = COALESCE(started_at, ?), delivered = 1 WHERE id = ?",
            (event.status, event.attempt, at if event.status == "running" else None, event.job_id),
        )
    else:
        return None  # an attempt ended and another follows: the job stays running
    if old == event.status:
        return None
    return StatusChange("job", event.job_id, runner_id, old, event.status, at)


def _apply_step_event(conn: sqlite3.Connection, runner_id: str, event: StepEvent) -> None:
    at = event.at.timestamp()
    owned = conn.execute("SELECT 1 FROM jobs WHERE id = ? AND runner_id = ?", (event.job_id, runner_id)).fetchone()
    if owned is None:
        return
    if event.status == "running":
        conn.execute(
            "INSERT INTO job_steps (job_id, attempt, idx, name, status, started_at) VALUES (?, ?, ?, ?, 'running', ?)"
            " ON CONFLICT (job_id, attempt, idx) DO UPDATE SET status = 'running', started_at = excluded.started_at",
            (event.job_id, event.attempt, event.index, event.name, at),
        )
    else:
        conn.execute(
            "INSERT INTO job_steps (job_id, attempt, idx, name, status, exit_code, completed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt, idx) DO UPDATE SET"
            " status = excluded.status, exit_code = excluded.exit_code, completed_at = excluded.completed_at",
            (event.job_id, event.attempt, event.index, event.name, event.status, event.exit_code, at),
        )
