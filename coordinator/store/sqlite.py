"""The embedded default store: one SQLite file in WAL mode, schema versioned by ``PRAGMA user_version``."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from coordinator.sealing import Sealer
from coordinator.store import events
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
from coordinator.store.rows import RUNNER_INSERT_COLUMNS, runner_values, stored_spec, where_clause
from coordinator.store.rows import job_of as _job
from coordinator.store.rows import runner_of as _runner
from coordinator.store.schema import MIGRATIONS
from shared.models import AgentEvent, CurrentLoad, JobSubmission
from shared.sqlite import Database, has_tags

RUNNER_CACHE_TTL = 60.0
"""How long a cached runner record, filter membership or statistics may be served. Every write this process
makes replaces or drops what it changes at once; the TTL only bounds what another process writing the same
database could change unseen. Long enough that a fleet's records stay cached between their heartbeats."""
RUNNER_CACHE_SIZE = 20_000
MEMBERSHIP_CACHE_SIZE = 256
"""Distinct runner filters whose matching ids are kept (a new one past this clears them all)."""


def _write_beats(conn: sqlite3.Connection, beats: dict[str, PendingHeartbeat]) -> None:
    """The heartbeat columns of many runners in one statement; ``last_seen`` never moves back (an update
    through the API may have set it later meanwhile)."""
    if beats:
        conn.executemany(
            "UPDATE runners SET load = ?, heartbeat_interval = ?,"
            " last_seen = CASE WHEN last_seen > ? THEN last_seen ELSE ? END, last_heartbeat = ? WHERE id = ?",
            [(b.load_json, b.interval, b.at, b.at, b.at, runner_id) for runner_id, b in beats.items()],
        )


def _statistics(conn: sqlite3.Connection, runner_id: str) -> Statistics:
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


class SqliteStore:
    def __init__(self, path: Path, sealer: Sealer | None = None) -> None:
        self.db = Database(path, MIGRATIONS)
        self._sealer = sealer
        """Encrypts the values of masked variables in stored specs (see ``coordinator.sealing``)."""
        # Runners by id, read far more often (every submit, every delivery) than written. Every write to a
        # runner row goes through this class and forgets the entry; the TTL bounds what another coordinator
        # sharing a replicated database could change unseen.
        self._runners: dict[str, tuple[float, RunnerRecord]] = {}
        self._generation = 0
        # The ids (in registration order) matching each runner filter, for list pages and their total_count;
        # dropped whenever a runner joins, leaves, or changes status, type or tags (``_membership`` counts that).
        self._members: dict[tuple[Any, ...], tuple[float, list[str]]] = {}
        self._membership = 0
        # Job statistics per runner, dropped when one of its jobs changes status.
        self._statistics: dict[str, tuple[float, Statistics]] = {}
        self._job_changes = 0
        # Heartbeats recorded but not yet written (see record_heartbeat), the latest per runner.
        self._pending: dict[str, PendingHeartbeat] = {}

    @property
    def sealer(self) -> Sealer | None:
        return self._sealer

    async def open(self) -> None:
        await self.db.open()
        # The registry, read once: a fleet's first heartbeats and reads then cost no row reads each.
        generation = self._generation

        def op(conn: sqlite3.Connection) -> list[RunnerRecord]:
            rows = conn.execute("SELECT * FROM runners ORDER BY seq LIMIT ?", (RUNNER_CACHE_SIZE,)).fetchall()
            return [_runner(r) for r in rows]

        for runner in await self.db.read(op):
            if generation == self._generation:
                self._cache(runner)

    def _stored_spec(self, spec: JobSubmission) -> str:
        return stored_spec(spec, self._sealer)

    async def close(self) -> None:
        await self.flush_heartbeats()
        await self.db.close()

    async def storage_problem(self) -> str | None:
        return await self.db.storage_problem()

    @property
    def storage_errors(self) -> int:
        return self.db.errors

    # --- runners -------------------------------------------------------------------------------------------

    async def insert_runner(self, runner: RunnerRecord) -> None:
        def op(conn: sqlite3.Connection) -> None:
            values = runner_values(runner)
            marks = ", ".join("?" * len(values))
            conn.execute(f"INSERT INTO runners ({RUNNER_INSERT_COLUMNS}) VALUES ({marks})", values)

        await self.db.run(op)
        self._forget(runner.id, membership=True)

    async def get_runner(self, runner_id: str) -> RunnerRecord | None:
        cached = self._runners.get(runner_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        generation = self._generation

        def op(conn: sqlite3.Connection) -> RunnerRecord | None:
            row = conn.execute("SELECT * FROM runners WHERE id = ?", (runner_id,)).fetchone()
            return _runner(row) if row else None

        runner = await self.db.read(op)
        if runner is not None:
            runner = self._overlay(runner)
        # Cache only if no runner was written while the read was in flight (it could predate that write).
        if runner is not None and generation == self._generation:
            self._cache(runner)
        return runner

    def _cache(self, runner: RunnerRecord) -> None:
        if len(self._runners) > RUNNER_CACHE_SIZE:
            self._runners.clear()
        self._runners[runner.id] = (time.monotonic() + RUNNER_CACHE_TTL, runner)

    def _forget(self, *runner_ids: str, membership: bool = False) -> None:
        """Drop cached records after a write; ``membership``: the write may change which filters they match."""
        self._generation += 1
        for runner_id in runner_ids:
            self._runners.pop(runner_id, None)
        if membership:
            self._membership += 1
            self._members.clear()

    def _forget_statistics(self, runner_ids: Iterable[str]) -> None:
        self._job_changes += 1
        for runner_id in runner_ids:
            self._statistics.pop(runner_id, None)

    async def token_owner(self, token: str) -> str | None:
        """The id of the runner ``token`` belongs to, if any."""

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT id FROM runners WHERE token = ?", (token,)).fetchone()
            return str(row["id"]) if row else None

        return await self.db.read(op)

    async def list_runners(
        self, filters: RunnerFilter, limit: int | None, offset: int
    ) -> tuple[list[RunnerRecord], int]:
        """A page in registration order and the count of all matches. The ids matching each filter are kept in
        memory (read from an index, dropped on any change of membership or after ``RUNNER_CACHE_TTL``), so a
        page costs the same at any offset and ``total_count`` needs no scan; the page's records come from the
        record cache, the missing ones in one indexed query."""
        ids = await self._matching(filters)
        page = ids[offset:] if limit is None else ids[offset : offset + limit]
        now = time.monotonic()
        found: dict[str, RunnerRecord] = {}
        missing: list[str] = []
        for runner_id in page:
            cached = self._runners.get(runner_id)
            if cached is not None and cached[0] > now:
                found[runner_id] = cached[1]
            else:
                missing.append(runner_id)
        if missing:
            generation = self._generation

            def op(conn: sqlite3.Connection) -> list[RunnerRecord]:
                records: list[RunnerRecord] = []
                for start in range(0, len(missing), 500):  # bound the statement's parameters
                    chunk = missing[start : start + 500]
                    marks = ", ".join("?" for _ in chunk)
                    rows = conn.execute(f"SELECT * FROM runners WHERE id IN ({marks})", chunk).fetchall()
                    records.extend(_runner(r) for r in rows)
                return records

            for record in await self.db.read(op):
                found[record.id] = record = self._overlay(record)
                if generation == self._generation:
                    self._cache(record)
        return [found[i] for i in page if i in found], len(ids)

    async def _matching(self, filters: RunnerFilter) -> list[str]:
        wanted = sorted(set(filters.tags))
        key = (filters.status, filters.type, tuple(wanted))
        cached = self._members.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        clause, params = where_clause({"status": filters.status, "type": filters.type}, wanted, has_tags)
        generation = self._membership

        def op(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute(f"SELECT id FROM runners {clause} ORDER BY seq", params)]

        ids = await self.db.read(op)
        if generation == self._membership:
            if len(self._members) > MEMBERSHIP_CACHE_SIZE:
                self._members.clear()
            self._members[key] = (time.monotonic() + RUNNER_CACHE_TTL, ids)
        return ids

    async def update_runner(self, runner_id: str, changes: RunnerChanges, now: float) -> RunnerRecord | None:
        columns = changes.stored()

        def op(conn: sqlite3.Connection) -> RunnerRecord | None:
            if columns:
                sets = ", ".join(f"{column} = ?" for column in columns)
                conn.execute(
                    f"UPDATE runners SET {sets}, updated_at = ? WHERE id = ?", [*columns.values(), now, runner_id]
                )
            row = conn.execute("SELECT * FROM runners WHERE id = ?", (runner_id,)).fetchone()
            return _runner(row) if row else None

        result = await self.db.run(op)
        # after the write: see get_runner
        self._forget(runner_id, membership=changes.changes_membership)
        return result

    async def delete_runner(self, runner_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM runners WHERE id = ?", (runner_id,)).rowcount > 0

        result = await self.db.run(op)
        self._pending.pop(runner_id, None)
        self._forget(runner_id, membership=True)  # after the write: see get_runner
        self._forget_statistics([runner_id])
        return result

    async def record_heartbeat(
        self, runner_id: str, load: CurrentLoad, status: str, interval: float, now: float
    ) -> StatusChange | None:
        """A heartbeat that keeps the runner's status costs no database work here: the cached record is replaced
        and the row written by the next :meth:`flush_heartbeats` (every read sees it meanwhile). One that changes
        the status (a runner coming back, or going to ``error``) is written at once, as filters depend on it."""
        runner = await self.get_runner(runner_id)
        if runner is None:
            return None
        if runner.status != status:
            return await self._write_heartbeat(runner_id, load, status, interval, now)
        beat = PendingHeartbeat(load.model_dump_json(), load, interval, now)
        self._pending[runner_id] = beat
        self._generation += 1  # a read in flight predates this heartbeat: it must not be cached
        self._runners[runner_id] = (time.monotonic() + RUNNER_CACHE_TTL, beat.applied(runner))
        return StatusChange("runner", runner_id, runner_id, runner.status, status, now)

    async def _write_heartbeat(
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

        self._pending.pop(runner_id, None)  # this write supersedes it
        result = await self.db.run(op)
        self._forget(runner_id, membership=True)  # after the write: see get_runner
        return result

    @property
    def pending_heartbeats(self) -> int:
        return len(self._pending)

    async def flush_heartbeats(self) -> int:
        """Write the heartbeats recorded since the last flush, in one transaction; returns how many."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        try:
            await self.db.run(partial(_write_beats, beats=pending))
        except BaseException:
            self._pending = {**pending, **self._pending}  # kept for the next flush; newer ones win
            raise
        return len(pending)

    def _overlay(self, runner: RunnerRecord) -> RunnerRecord:
        """A record read from the database, with its heartbeat not yet written."""
        beat = self._pending.get(runner.id)
        return beat.applied(runner) if beat is not None else runner

    async def mark_stale(self, now: float, multiplier: float) -> list[StatusChange]:
        pending, self._pending = self._pending, {}

        def op(conn: sqlite3.Connection) -> list[StatusChange]:
            _write_beats(conn, pending)  # liveness judges by every heartbeat received, written or not
            rows = conn.execute(
                "SELECT id, status FROM runners WHERE status != 'inactive' AND last_seen < ? - heartbeat_interval * ?",
                (now, multiplier),
            ).fetchall()
            changes = []
            for row in rows:
                conn.execute("UPDATE runners SET status = 'inactive' WHERE id = ?", (row["id"],))
                changes.append(StatusChange("runner", row["id"], row["id"], row["status"], "inactive", now))
            return changes

        try:
            changes = await self.db.run(op)
        except BaseException:
            self._pending = {**pending, **self._pending}  # kept for the next flush; newer ones win
            raise
        self._forget(*(change.runner_id for change in changes), membership=bool(changes))
        return changes

    async def statistics(self, runner_id: str) -> Statistics:
        cached = self._statistics.get(runner_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        generation = self._job_changes
        statistics = await self.db.read(partial(_statistics, runner_id=runner_id))
        if generation == self._job_changes:
            if len(self._statistics) > RUNNER_CACHE_SIZE:
                self._statistics.clear()
            self._statistics[runner_id] = (time.monotonic() + RUNNER_CACHE_TTL, statistics)
        return statistics

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
                (job.id, job.runner_id, job.spec.name, self._stored_spec(job.spec), job.status, job.created_at),
            )
            return QueueState(int(ahead), [float(r[0]) for r in running])

        return await self.db.run(op)

    async def get_job(self, job_id: str) -> JobRecord | None:
        def op(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            job = _job(row, self._sealer)
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
            return [_job(r, self._sealer) for r in rows], int(total)

        return await self.db.read(op)

    async def undelivered_jobs(self, runner_id: str, limit: int) -> list[JobRecord]:
        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE runner_id = ? AND delivered = 0 AND status = 'queued' ORDER BY seq LIMIT ?",
                (runner_id, limit),
            ).fetchall()
            return [_job(r, self._sealer) for r in rows]

        return await self.db.read(op)

    async def mark_delivered(self, job_id: str, runner_id: str) -> str | None:
        """Record that the runner's agent took the job; returns the job's status (``None`` if the runner no
        longer has it: deleted, or a routed job moved to another runner)."""

        def op(conn: sqlite3.Connection) -> str | None:
            conn.execute("UPDATE jobs SET delivered = 1 WHERE id = ? AND runner_id = ?", (job_id, runner_id))
            row = conn.execute("SELECT status FROM jobs WHERE id = ? AND runner_id = ?", (job_id, runner_id)).fetchone()
            return str(row["status"]) if row else None

        return await self.db.run(op)

    async def held_job_count(self, runner_id: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE runner_id = ? AND delivered = 0 AND status = 'queued'", (runner_id,)
            ).fetchone()
            return int(row[0])

        return await self.db.read(op)

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

        changes = await self.db.run(op)
        self._forget_statistics([runner_id])
        return changes

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

        change = await self.db.run(op)
        if change is not None:
            self._forget_statistics([change.runner_id])
        return change

    # --- agent events --------------------------------------------------------------------------------------

    async def apply_events(self, runner_id: str, batch: list[AgentEvent]) -> tuple[int, list[StatusChange]] | None:
        """Exactly once and in order: see ``coordinator.store.events``."""
        applied = await self.db.run(lambda conn: events.apply(conn, runner_id, batch))
        if applied is not None and applied[1]:
            self._forget_statistics([runner_id])
        return applied
