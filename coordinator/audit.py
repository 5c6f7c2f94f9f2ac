"""The audit trail: every state-changing call, who made it, from where, and how it ended.

Recorded by the auth middleware (:func:`coordinator.middlewares.auth_middleware`) for the routes in
:data:`ACTIONS` — register, update, announce, delete, job submit and cancel, config, stop/start/restart, bulk,
ticket issue — whatever their outcome (refused calls too), and once per principal the first time a credential is
used (``credential.first_use``). Heartbeats and event batches are not recorded: they are the agents' steady
traffic, and the runner's registration already names the runner.

Entries are queued in memory and written in batches by one background task, so a recorded call does not wait
for an extra transaction; :meth:`AuditLog.flush` (called before every read and at shutdown) writes what is queued.
Readable by admins at ``GET /api/audit`` (newest first) with ``since``, ``until``, ``principal``, ``limit``,
``offset``. Entries older than ``audit.retention_days`` (default 365) are deleted, at start and hourly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from coordinator import keys
from shared.errors import InvalidRequest
from shared.http import json_response, query_int, query_time
from shared.models import MAX_LIST_LIMIT, AuditEntry, AuditList
from shared.sqlite import Database
from shared.tasks import TaskSet
from shared.timeutil import from_epoch

if TYPE_CHECKING:
    from coordinator.store.protocols import AuditStorage

log = structlog.get_logger(__name__)

MIGRATION = """
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    principal TEXT NOT NULL,
    role TEXT,
    client TEXT NOT NULL,
    action TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    runner_id TEXT,
    job_id TEXT,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_ts ON audit(ts);
CREATE INDEX audit_principal ON audit(principal, ts)
"""

R = "/api/runners/{runner_id}"
ACTIONS: dict[tuple[str, str], str] = {
    ("POST", "/api/runners/register"): "runner.register",
    ("PUT", R): "runner.update",
    ("POST", f"{R}/announce"): "runner.announce",
    ("DELETE", R): "runner.delete",
    ("POST", f"{R}/jobs"): "job.submit",
    ("POST", f"{R}/jobs/{{job_id}}/cancel"): "job.cancel",
    ("POST", "/api/jobs"): "job.submit",
    ("POST", "/api/jobs/{job_id}/cancel"): "job.cancel",
    ("PUT", f"{R}/config"): "runner.config",
    ("POST", f"{R}/start"): "runner.start",
    ("POST", f"{R}/stop"): "runner.stop",
    ("POST", f"{R}/restart"): "runner.restart",
    ("POST", "/api/runners/bulk"): "runners.bulk",
    ("POST", "/api/tickets"): "ticket.create",
}
FIRST_USE = "credential.first_use"
MAX_QUEUED = 100_000
MAX_REMEMBERED = 100_000

DETAIL: web.RequestKey[str] = web.RequestKey("audit_detail")
"""What a handler adds to its call's entry (the bulk operation, the new runner's or job's id)."""


def note(request: web.Request, detail: str) -> None:
    request[DETAIL] = detail


def outcome_of(status: int) -> str:
    if status < 400:
        return "success"
    return "refused" if status in (401, 403, 429) else "failed"


@dataclass(frozen=True)
class Record:
    ts: float
    principal: str
    role: str | None
    client: str
    action: str
    method: str
    path: str
    runner_id: str | None
    job_id: str | None
    status: int
    detail: str | None = None

    def row(self) -> tuple[object, ...]:
        return (
            self.ts,
            self.principal,
            self.role,
            self.client,
            self.action,
            self.method,
            self.path,
            self.runner_id,
            self.job_id,
            self.status,
            outcome_of(self.status),
            self.detail,
        )


PRUNE_INTERVAL = 3600.0


class SqliteAuditStorage:
    """The ``audit`` table of the SQLite store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def first_used(self) -> set[str]:
        def op(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute("SELECT DISTINCT principal FROM audit WHERE action = ?", (FIRST_USE,))
            return {str(row[0]) for row in rows}

        return await self._db.read(op)

    async def append(self, records: Sequence[Record]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO audit (ts, principal, role, client, action, method, path, runner_id, job_id, status,"
                " outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [r.row() for r in records],
            )

        await self._db.run(op)

    async def prune(self, before: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM audit WHERE ts < ?", (before,)).rowcount

        return await self._db.run(op)

    async def query(
        self, since: float | None, until: float | None, principal: str | None, limit: int, offset: int
    ) -> tuple[list[AuditEntry], int]:
        where, args = ["1=1"], list[object]()
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts <= ?")
            args.append(until)
        if principal is not None:
            where.append("principal = ?")
            args.append(principal)
        clause = " AND ".join(where)

        def op(conn: sqlite3.Connection) -> tuple[list[AuditEntry], int]:
            total = int(conn.execute(f"SELECT COUNT(*) FROM audit WHERE {clause}", args).fetchone()[0])
            rows = conn.execute(
                f"SELECT * FROM audit WHERE {clause} ORDER BY id DESC LIMIT ? OFFSET ?", [*args, limit, offset]
            ).fetchall()
            return [audit_entry(row) for row in rows], total

        return await self._db.read(op)


class AuditLog:
    def __init__(self, storage: AuditStorage, retention_days: float = 365.0) -> None:
        self._storage = storage
        self._retention = retention_days * 86400
        self._queue: list[Record] = []
        self._wake = asyncio.Event()
        self._seen: set[str] = set()
        self._tasks = TaskSet("audit")
        self.dropped = 0
        self._flushing = asyncio.Lock()
        """One batch written at a time: see :meth:`flush`."""

    async def start(self) -> None:
        self._seen = await self._storage.first_used()
        self._tasks.spawn(self._write_forever(), "writer")
        self._tasks.spawn(self._prune_forever(), "retention")

    async def prune(self, now: float | None = None) -> int:
        """Delete the entries older than the retention; how many went."""
        return await self._storage.prune((time.time() if now is None else now) - self._retention)

    async def _prune_forever(self) -> None:
        while True:
            try:
                removed = await self.prune()
                if removed:
                    log.info("audit entries past their retention deleted", count=removed)
            except Exception as e:
                log.error("audit retention failed; will retry", error=str(e))
            await asyncio.sleep(PRUNE_INTERVAL)

    def record(self, record: Record) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1  # the database is far behind: say so rather than grow without bound
            log.error("audit queue full; entry dropped", action=record.action, principal=record.principal)
            return
        self._queue.append(record)
        self._wake.set()

    def first_use(self, principal: str) -> bool:
        """``True`` the first time ``principal`` is seen by this trail (then remembered)."""
        if principal in self._seen:
            return False
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen.clear()  # bounded; a forgotten principal is recorded once more
        self._seen.add(principal)
        return True

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception as e:  # the entries stay queued; retried at the next wake-up
                log.error("audit trail write failed; will retry", error=str(e))
                await asyncio.sleep(1.0)
                self._wake.set()

    async def flush(self) -> None:
        """Write what is queued. Batches are written one at a time, in the order they were taken, and a flush
        waits for the batch in flight: once it returns, everything recorded before it is stored and in order,
        also on an engine that runs transactions side by side (PostgreSQL's pool)."""
        async with self._flushing:
            await self._write_queued()

    async def _write_queued(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            await self._storage.append(batch)
        except Exception:
            self._queue[:0] = batch  # kept for the next write
            raise

    async def close(self) -> None:
        await self._tasks.close()
        await self.flush()

    async def query(
        self, since: float | None, until: float | None, principal: str | None, limit: int, offset: int
    ) -> tuple[list[AuditEntry], int]:
        await self.flush()
        return await self._storage.query(since, until, principal, limit, offset)


def audit_entry(row: Any) -> AuditEntry:
    """An ``audit`` row (either engine's, read by column name) as the API shows it."""
    return AuditEntry(
        id=row["id"],
        timestamp=from_epoch(row["ts"]),
        principal=row["principal"],
        role=row["role"],
        client=row["client"],
        action=row["action"],
        method=row["method"],
        path=row["path"],
        runner_id=row["runner_id"],
        job_id=row["job_id"],
        status=row["status"],
        outcome=row["outcome"],
        detail=row["detail"],
    )


async def list_audit(request: web.Request) -> web.Response:
    since = query_time(request, "since")
    until = query_time(request, "until")
    if since is not None and until is not None and since > until:
        raise InvalidRequest("Query parameter 'since' must not be later than 'until'", field="since")
    principal = request.query.get("principal") or None
    limit = query_int(request, "limit", 100, 1, MAX_LIST_LIMIT) or 100
    offset = query_int(request, "offset", 0, 0, 10_000_000) or 0
    entries, total = await request.app[keys.AUDIT].query(since, until, principal, limit, offset)
    return json_response(AuditList(entries=entries, total_count=total, has_more=offset + len(entries) < total))
