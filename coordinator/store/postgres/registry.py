"""The runner registry, the job index and agent event application on PostgreSQL (``base.Store``).

The semantics are the SQLite store's (``coordinator.store.sqlite``), kept true when several coordinators share
the database:

- one transaction per store operation (:meth:`PostgresDatabase.transaction`);
- events are applied exactly once, in sequence order: the runner's row is locked (``SELECT ... FOR UPDATE``)
  while the batch past its high-water mark is applied and the mark advanced, so a batch resent through another
  coordinator waits and then finds nothing new;
- a job ends in one terminal state: its row is locked before an event changes it, and cancellations update only
  rows still open (the status is in the ``WHERE`` clause);
- heartbeats that keep a runner's status are batched, as on SQLite: kept in memory (this coordinator's reads
  see them at once), written together by :meth:`PostgresStore.flush_heartbeats`; one that changes the status
  is written at once.

Records are not cached between operations: another coordinator may change any row at any time, so each read
asks the database (one indexed query), and only this process's unwritten heartbeats are laid over it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from coordinator.sealing import Sealer
from coordinator.store.base import (
    AttemptRecord,
    JobRecord,
    PendingHeartbeat,
    QueueState,
    RunnerChanges,
    RunnerFilter,
    RunnerRecord,
    Statistics,
    StatusChange,
    StepRecord,
)
from coordinator.store.logs import log_entries
from coordinator.store.postgres.database import Connection, PostgresDatabase
from coordinator.store.postgres.logs import append_log_lines
from coordinator.store.postgres.sql import has_tags, numbered
from coordinator.store.rows import (
    RUNNER_INSERT_COLUMNS,
    job_of,
    runner_of,
    runner_values,
    stored_spec,
    where_clause,
)
from shared.models import TERMINAL_JOB_STATUSES, AgentEvent, CurrentLoad, JobEvent, LogEvent, StepEvent

OPEN = "('queued', 'running')"
FINISHED = "('completed', 'failed', 'timed_out', 'cancelled')"
INSERT_JOB = """
WITH inserted AS (
    INSERT INTO jobs (id, runner_id, name, spec, status, created_at) VALUES ($1, $2, $3, $4, $5, $6)
)
SELECT (SELECT COUNT(*) FROM jobs WHERE runner_id = $2 AND status = 'queued') AS ahead,
       ARRAY(SELECT COALESCE(started_at, created_at) FROM jobs WHERE runner_id = $2 AND status = 'running') AS running
"""
"""Store a job and read what is ahead of it on its runner (the queued jobs, the running ones' starts)."""


async def _write_beats(conn: Connection, beats: dict[str, PendingHeartbeat]) -> None:
    """The heartbeat columns of many runners in one statement; ``last_seen`` never moves back. Rows are locked
    in id order, as every statement here that locks several runners does, so two coordinators flushing at
    once wait for each other instead of deadlocking."""
    if beats:
        ids = sorted(beats)
        await conn.execute(
            "WITH locked AS (SELECT id FROM runners WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE)"
            " UPDATE runners r SET load = b.load, heartbeat_interval = b.interval,"
            " last_seen = GREATEST(r.last_seen, b.at), last_heartbeat = b.at"
            " FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[]) AS b(id, load, interval, at), locked"
            " WHERE r.id = b.id AND locked.id = b.id",
            ids,
            [beats[i].load_json for i in ids],
            [beats[i].interval for i in ids],
            [beats[i].at for i in ids],
        )


class PostgresStore:
    def __init__(self, db: PostgresDatabase, sealer: Sealer | None = None) -> None:
        self._db = db
        self._sealer = sealer
        """Encrypts the values of masked variables in stored specs (see ``coordinator.sealing``)."""
        self._pending: dict[str, PendingHeartbeat] = {}
        self._writing: list[dict[str, PendingHeartbeat]] = []
        """Held heartbeats taken by a write that has not committed yet: still laid over reads meanwhile."""
        """Heartbeats recorded but not yet written, the latest per runner (see :meth:`record_heartbeat`)."""

    @property
    def sealer(self) -> Sealer | None:
        return self._sealer

    async def open(self) -> None:
        """Nothing to load: the database (opened by its owner) holds everything."""

    async def close(self) -> None:
        await self.flush_heartbeats()

    async def storage_problem(self) -> str | None:
        return await self._db.storage_problem()

    @property
    def storage_errors(self) -> int:
        return self._db.errors

    # --- runners -------------------------------------------------------------------------------------------

    async def insert_runner(self, runner: RunnerRecord) -> None:
        async with self._db.transaction() as conn:
            values = runner_values(runner)
            marks = ", ".join(f"${n}" for n in range(1, len(values) + 1))
            await conn.execute(f"INSERT INTO runners ({RUNNER_INSERT_COLUMNS}) VALUES ({marks})", *values)

    def _overlay(self, runner: RunnerRecord) -> RunnerRecord:
        """A record read from the database, with this process's heartbeat not yet written (held, or in a
        write that has not committed: a read must not see it vanish and come back)."""
        beat = self._pending.get(runner.id)
        for writing in reversed(self._writing):
            if beat is not None:
                break
            beat = writing.get(runner.id)
        return beat.applied(runner) if beat is not None else runner

    @contextlib.contextmanager
    def _taken(self) -> Iterator[dict[str, PendingHeartbeat]]:
        """The held heartbeats, for one write; laid over reads until it commits, held again if it fails (newer
        ones win)."""
        taken, self._pending = self._pending, {}
        self._writing.append(taken)
        try:
            yield taken
        except BaseException:
            self._pending = {**taken, **self._pending}
            raise
        finally:
            self._writing = [writing for writing in self._writing if writing is not taken]

    async def get_runner(self, runner_id: str) -> RunnerRecord | None:
        async with self._db.connection() as conn:
            row = await conn.fetchrow("SELECT * FROM runners WHERE id = $1", runner_id)
        return self._overlay(runner_of(row)) if row is not None else None

    async def token_owner(self, token: str) -> str | None:
        async with self._db.connection() as conn:
            owner = await conn.fetchval("SELECT id FROM runners WHERE token = $1", token)
        return str(owner) if owner is not None else None

    async def list_runners(
        self, filters: RunnerFilter, limit: int | None, offset: int
    ) -> tuple[list[RunnerRecord], int]:
        """A page in registration order and the count of all matches, read in one transaction."""
        portable, params = where_clause({"status": filters.status, "type": filters.type}, filters.tags, has_tags)
        clause = numbered(portable)
        page = len(params) + 1
        async with self._db.transaction() as conn:
            total = await conn.fetchval(f"SELECT COUNT(*) FROM runners {clause}", *params)
            rows = await conn.fetch(
                f"SELECT * FROM runners {clause} ORDER BY seq LIMIT ${page} OFFSET ${page + 1}", *params, limit, offset
            )
        return [self._overlay(runner_of(row)) for row in rows], int(total)

    async def update_runner(self, runner_id: str, changes: RunnerChanges, now: float) -> RunnerRecord | None:
        columns = changes.stored()
        sets = "".join(f"{column} = ${n}, " for n, column in enumerate(columns, start=3))
        async with self._db.transaction() as conn:
            if columns:
                row = await conn.fetchrow(
                    f"UPDATE runners SET {sets}updated_at = $2 WHERE id = $1 RETURNING *",
                    runner_id,
                    float(now),
                    *columns.values(),
                )
            else:
                row = await conn.fetchrow("SELECT * FROM runners WHERE id = $1", runner_id)
        return self._overlay(runner_of(row)) if row is not None else None

    async def delete_runner(self, runner_id: str) -> bool:
        async with self._db.transaction() as conn:
            deleted = await conn.fetchval("DELETE FROM runners WHERE id = $1 RETURNING 1", runner_id)
        self._pending.pop(runner_id, None)
        return deleted is not None

    async def record_heartbeat(
        self, runner_id: str, load: CurrentLoad, status: str, interval: float, now: float
    ) -> StatusChange | None:
        """A heartbeat that keeps the runner's status is kept for the next :meth:`flush_heartbeats` (this
        coordinator's reads see it meanwhile); one that changes the status is written at once."""
        runner = await self.get_runner(runner_id)
        if runner is None:
            return None
        if runner.status != status:
            return await self._write_heartbeat(runner_id, load, status, interval, now)
        self._pending[runner_id] = PendingHeartbeat(load.model_dump_json(), load, float(interval), float(now))
        return StatusChange("runner", runner_id, runner_id, runner.status, status, now)

    async def _write_heartbeat(
        self, runner_id: str, load: CurrentLoad, status: str, interval: float, now: float
    ) -> StatusChange | None:
        self._pending.pop(runner_id, None)  # this write supersedes it
        async with self._db.transaction() as conn:
            old = await conn.fetchval("SELECT status FROM runners WHERE id = $1 FOR UPDATE", runner_id)
            if old is None:
                return None
            await conn.execute(
                "UPDATE runners SET status = $2, load = $3, heartbeat_interval = $4, last_seen = $5,"
                " last_heartbeat = $5 WHERE id = $1",
                runner_id,
                status,
                load.model_dump_json(),
                float(interval),
                float(now),
            )
        return StatusChange("runner", runner_id, runner_id, str(old), status, now)

    @property
    def pending_heartbeats(self) -> int:
        return len(self._pending)

    async def flush_heartbeats(self) -> int:
        """Write the heartbeats recorded since the last flush, in one statement; returns how many."""
        if not self._pending:
            return 0
        with self._taken() as pending:
            async with self._db.transaction() as conn:
                await _write_beats(conn, pending)
        return len(pending)

    async def mark_stale(self, now: float, multiplier: float) -> list[StatusChange]:
        with self._taken() as pending:
            async with self._db.transaction() as conn:
                await _write_beats(conn, pending)  # liveness judges by every heartbeat received, written or not
                rows = await conn.fetch(
                    "WITH stale AS (SELECT id, status FROM runners WHERE status != 'inactive'"
                    " AND last_seen < $1 - heartbeat_interval * $2 ORDER BY id FOR UPDATE)"
                    " UPDATE runners r SET status = 'inactive' FROM stale WHERE r.id = stale.id"
                    " RETURNING r.id, stale.status AS old_status",
                    float(now),
                    float(multiplier),
                )
        return [StatusChange("runner", r["id"], r["id"], r["old_status"], "inactive", now) for r in rows]

    async def statistics(self, runner_id: str) -> Statistics:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT COUNT(*) AS total,"
                " COUNT(*) FILTER (WHERE status = 'completed') AS ok,"
                " COUNT(*) FILTER (WHERE status IN ('failed', 'timed_out')) AS bad,"
                " AVG(completed_at - started_at) FILTER (WHERE started_at IS NOT NULL) AS avg_time"
                f" FROM jobs WHERE runner_id = $1 AND status IN {FINISHED}",
                runner_id,
            )
        assert row is not None  # an aggregate without GROUP BY has one row
        return Statistics(
            total_jobs_executed=int(row["total"] or 0),
            successful_jobs=int(row["ok"] or 0),
            failed_jobs=int(row["bad"] or 0),
            average_execution_time=round(float(row["avg_time"] or 0.0), 3),
        )

    # --- jobs ----------------------------------------------------------------------------------------------

    async def insert_job(self, job: JobRecord) -> QueueState:
        # One statement, one round trip: what is ahead of the new job (for its start-time estimate) is read in
        # the snapshot the insert runs in, which does not yet see the new row.
        async with self._db.connection() as conn:
            spec = stored_spec(job.spec, self._sealer)
            row = await conn.fetchrow(
                INSERT_JOB, job.id, job.runner_id, job.spec.name, spec, job.status, float(job.created_at)
            )
        assert row is not None  # the SELECT has no FROM: one row
        return QueueState(int(row["ahead"]), [float(at) for at in row["running"]])

    async def get_job(self, job_id: str) -> JobRecord | None:
        async with self._db.transaction() as conn:
            row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
            if row is None:
                return None
            job = job_of(row, self._sealer)
            steps = await conn.fetch(
                "SELECT * FROM job_steps WHERE job_id = $1 AND attempt = $2 ORDER BY idx", job_id, job.attempt
            )
            attempts = await conn.fetch("SELECT * FROM job_attempts WHERE job_id = $1 ORDER BY attempt", job_id)
        job.steps = [
            StepRecord(s["idx"], s["name"], s["status"], s["exit_code"], s["started_at"], s["completed_at"])
            for s in steps
        ]
        job.attempts = [
            AttemptRecord(a["attempt"], a["status"], a["exit_code"], a["reason"], a["started_at"], a["completed_at"])
            for a in attempts
        ]
        return job

    async def list_jobs(
        self, runner_id: str, status: str | None, limit: int | None, offset: int
    ) -> tuple[list[JobRecord], int]:
        clause = "WHERE runner_id = $1" + (" AND status = $2" if status else "")
        params: list[Any] = [runner_id, *([status] if status else [])]
        page = len(params) + 1
        async with self._db.transaction() as conn:
            total = await conn.fetchval(f"SELECT COUNT(*) FROM jobs {clause}", *params)
            rows = await conn.fetch(
                f"SELECT * FROM jobs {clause} ORDER BY seq DESC LIMIT ${page} OFFSET ${page + 1}",
                *params,
                limit,
                offset,
            )
        return [job_of(r, self._sealer) for r in rows], int(total)

    async def undelivered_jobs(self, runner_id: str, limit: int) -> list[JobRecord]:
        async with self._db.connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM jobs WHERE runner_id = $1 AND delivered = 0 AND status = 'queued' ORDER BY seq LIMIT $2",
                runner_id,
                limit,
            )
        return [job_of(r, self._sealer) for r in rows]

    async def mark_delivered(self, job_id: str, runner_id: str) -> str | None:
        """Record that the runner's agent took the job; returns the job's status (``None`` if the runner no
        longer has it: deleted, or a routed job moved to another runner)."""
        async with self._db.transaction() as conn:
            status = await conn.fetchval(
                "UPDATE jobs SET delivered = 1 WHERE id = $1 AND runner_id = $2 RETURNING status", job_id, runner_id
            )
        return str(status) if status is not None else None

    async def held_job_count(self, runner_id: str) -> int:
        async with self._db.connection() as conn:
            count = await conn.fetchval(
                "SELECT COUNT(*) FROM jobs WHERE runner_id = $1 AND delivered = 0 AND status = 'queued'", runner_id
            )
        return int(count)

    async def open_job_count(self, runner_id: str) -> int:
        async with self._db.connection() as conn:
            count = await conn.fetchval(
                f"SELECT COUNT(*) FROM jobs WHERE runner_id = $1 AND status IN {OPEN}", runner_id
            )
        return int(count)

    async def cancel_open_jobs(self, runner_id: str, reason: str, now: float) -> list[StatusChange]:
        async with self._db.transaction() as conn:
            # The runner's row first, as event application takes it, so the two take the job rows in turn.
            await conn.execute("SELECT 1 FROM runners WHERE id = $1 FOR UPDATE", runner_id)
            rows = await conn.fetch(
                f"WITH open AS (SELECT id, status FROM jobs WHERE runner_id = $1 AND status IN {OPEN}"
                " ORDER BY seq FOR UPDATE)"
                " UPDATE jobs j SET status = 'cancelled', reason = $2, completed_at = $3 FROM open"
                " WHERE j.id = open.id RETURNING j.id, open.status AS old_status",
                runner_id,
                reason,
                float(now),
            )
        return [StatusChange("job", r["id"], runner_id, r["old_status"], "cancelled", now) for r in rows]

    async def cancel_held_job(self, job_id: str, reason: str, now: float) -> StatusChange | None:
        """Cancel a job the coordinator still holds (not yet delivered); ``None`` if an agent has it."""
        async with self._db.transaction() as conn:
            owner = await conn.fetchval(
                "UPDATE jobs SET status = 'cancelled', reason = $2, completed_at = $3"
                " WHERE id = $1 AND status = 'queued' AND delivered = 0 RETURNING runner_id",
                job_id,
                reason,
                float(now),
            )
        return StatusChange("job", job_id, str(owner), "queued", "cancelled", now) if owner is not None else None

    # --- agent events --------------------------------------------------------------------------------------

    async def apply_events(self, runner_id: str, batch: list[AgentEvent]) -> tuple[int, list[StatusChange]] | None:
        """Apply, in one transaction, the events numbered past the runner's high-water mark and advance it."""
        async with self._db.transaction() as conn:
            mark = await conn.fetchval("SELECT event_seq FROM runners WHERE id = $1 FOR UPDATE", runner_id)
            if mark is None:
                return None
            mark = int(mark)
            changes: list[StatusChange] = []
            lines: list[LogEvent] = []
            for event in sorted(batch, key=lambda e: e.seq):
                if event.seq <= mark:
                    continue
                if isinstance(event, JobEvent):
                    change = await _apply_job_event(conn, runner_id, event)
                    if change:
                        changes.append(change)
                elif isinstance(event, StepEvent):
                    await _apply_step_event(conn, runner_id, event)
                else:
                    lines.append(event)
                mark = event.seq
            await append_log_lines(conn, runner_id, log_entries(lines))
            await conn.execute("UPDATE runners SET event_seq = $2 WHERE id = $1", runner_id, mark)
        return mark, changes


async def _apply_job_event(conn: Connection, runner_id: str, event: JobEvent) -> StatusChange | None:
    at = event.at.timestamp()
    row = await conn.fetchrow(
        "SELECT status FROM jobs WHERE id = $1 AND runner_id = $2 FOR UPDATE", event.job_id, runner_id
    )
    if row is None:
        return None
    terminal = event.status in TERMINAL_JOB_STATUSES and event.final
    # The attempt's own record.
    if event.status == "running":
        await conn.execute(
            "INSERT INTO job_attempts (job_id, attempt, status, started_at) VALUES ($1, $2, 'running', $3)"
            " ON CONFLICT (job_id, attempt) DO UPDATE SET status = 'running', started_at = excluded.started_at",
            event.job_id,
            event.attempt,
            at,
        )
    elif event.attempt > 0:
        await conn.execute(
            "INSERT INTO job_attempts (job_id, attempt, status, exit_code, reason, completed_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id, attempt) DO UPDATE SET status = excluded.status,"
            " exit_code = excluded.exit_code, reason = excluded.reason, completed_at = excluded.completed_at",
            event.job_id,
            event.attempt,
            event.status,
            event.exit_code,
            event.reason,
            at,
        )
    old = str(row["status"])
    if old in TERMINAL_JOB_STATUSES:
        # A job ends in exactly one terminal state: the first one recorded stands.
        return None
    if terminal:
        await conn.execute(
            "UPDATE jobs SET status = $2, attempt = GREATEST(attempt, $3), exit_code = $4, reason = $5,"
            " completed_at = $6, delivered = 1 WHERE id = $1",
            event.job_id,
            event.status,
            event.attempt,
            event.exit_code,
            event.reason,
            at,
        )
    elif event.status not in TERMINAL_JOB_STATUSES:
        await conn.execute(
            "UPDATE jobs SET status = $2, attempt = $3, started_at = COALESCE(started_at, $4), delivered = 1"
            " WHERE id = $1",
            event.job_id,
            event.status,
            event.attempt,
            at if event.status == "running" else None,
        )
    else:
        return None  # an attempt ended and another follows: the job stays running
    if old == event.status:
        return None
    return StatusChange("job", event.job_id, runner_id, old, event.status, at)


async def _apply_step_event(conn: Connection, runner_id: str, event: StepEvent) -> None:
    at = event.at.timestamp()
    owned = await conn.fetchval("SELECT 1 FROM jobs WHERE id = $1 AND runner_id = $2", event.job_id, runner_id)
    if owned is None:
        return
    if event.status == "running":
        await conn.execute(
            "INSERT INTO job_steps (job_id, attempt, idx, name, status, started_at)"
            " VALUES ($1, $2, $3, $4, 'running', $5)"
            " ON CONFLICT (job_id, attempt, idx) DO UPDATE SET status = 'running', started_at = excluded.started_at",
            event.job_id,
            event.attempt,
            event.index,
            event.name,
            at,
        )
    else:
        await conn.execute(
            "INSERT INTO job_steps (job_id, attempt, idx, name, status, exit_code, completed_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (job_id, attempt, idx) DO UPDATE SET"
            " status = excluded.status, exit_code = excluded.exit_code, completed_at = excluded.completed_at",
            event.job_id,
            event.attempt,
            event.index,
            event.name,
            event.status,
            event.exit_code,
            at,
        )
