"""Both store engines for store-level tests: a real SQLite file, or a fresh database on the session's real
PostgreSQL server (``postgres_url``), each migrated by its own engine.

A test module opens them with ``engine = engines.engine`` and takes an ``engine`` argument: the test then runs once
per engine. :class:`Engine` runs the SQL a test sets up or checks with (``?`` placeholders on both engines) and
builds each store on its engine's database.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.sealing import Sealer
from coordinator.store import chunks, events, fleet, logs, metrics
from coordinator.store.metric_history import MetricHistory, Retention
from coordinator.store.postgres import fleet as pg_fleet
from coordinator.store.postgres import logs as pg_logs
from coordinator.store.postgres import metrics as pg_metrics
from coordinator.store.postgres.database import PostgresDatabase
from coordinator.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from coordinator.store.schema import MIGRATIONS
from shared import ids
from shared.models import AgentEvent, CurrentLoad, JobSubmission, LogEvent
from shared.sqlite import Database

ENGINES = ["sqlite", "postgresql"]
POSTGRES_MIGRATIONS = PG_MIGRATIONS
AnyFleetStore = fleet.FleetStore | pg_fleet.PostgresFleetStore
_MARK = re.compile(r"\?")


@dataclass
class Engine:
    kind: str
    sqlite: Database | None = None
    postgres: PostgresDatabase | None = None

    @contextlib.asynccontextmanager
    async def another(self) -> AsyncIterator[Engine]:
        """A second handle on the same database, as a second coordinator has: its own pool on PostgreSQL, its own
        connection (thread) on the SQLite file."""
        async with _opened(self.kind, self.postgres.url if self.postgres else None, self.sqlite_path) as other:
            yield other

    @property
    def sqlite_path(self) -> Path | None:
        return self.sqlite.path if self.sqlite is not None else None

    # --- SQL for setting up and checking -----------------------------------------------------------------------

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.postgres is not None:
            async with self.postgres.connection() as conn:
                return [tuple(row) for row in await conn.fetch(_numbered(sql), *args)]
        assert self.sqlite is not None
        return await self.sqlite.read(lambda conn: [tuple(row) for row in conn.execute(sql, args)])

    async def value(self, sql: str, *args: Any) -> Any:
        return (await self.rows(sql, *args))[0][0]

    async def execute(self, sql: str, *args: Any) -> None:
        if self.postgres is not None:
            async with self.postgres.transaction() as conn:
                await conn.execute(_numbered(sql), *args)
            return
        assert self.sqlite is not None

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(sql, args)

        await self.sqlite.run(op)

    async def add_runner(self, registered_at: float, status: str = "active", type: str = "native") -> str:
        runner_id = ids.new_runner_id()
        await self.execute(
            "INSERT INTO runners (id, name, type, status, host, port, capabilities, tags, metadata, resources, token,"
            " registered_at, last_seen, heartbeat_interval, load) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            runner_id,
            "synthetic",
            type,
            status,
            "127.0.0.1",
            1,
            "[]",
            "[]",
            "{}",
            "{}",
            ids.new_runner_token(),
            registered_at,
            registered_at,
            10.0,
            CurrentLoad().model_dump_json(),
        )
        return runner_id

    async def add_job(
        self,
        runner_id: str,
        status: str = "queued",
        created_at: float = 0.0,
        started_at: float | None = None,
        completed_at: float | None = None,
    ) -> str:
        job_id = ids.new_job_id()
        await self.execute(
            "INSERT INTO jobs (id, runner_id, name, spec, status, created_at, started_at, completed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            job_id,
            runner_id,
            "j",
            spec().model_dump_json(),
            status,
            created_at,
            started_at,
            completed_at,
        )
        return job_id

    # --- the stores on this engine -------------------------------------------------------------------------------

    def metrics(self, retention: Retention | None = None) -> MetricHistory:
        if self.postgres is not None:
            return pg_metrics.PostgresMetricsStore(self.postgres, retention)
        assert self.sqlite is not None
        return metrics.MetricsStore(self.sqlite, retention)

    def fleet(self, sealer: Sealer | None = None) -> AnyFleetStore:
        if self.postgres is not None:
            return pg_fleet.PostgresFleetStore(self.postgres, sealer)
        assert self.sqlite is not None
        return fleet.FleetStore(self.sqlite, sealer)

    def logs(self) -> logs.LogStore | pg_logs.PostgresLogStore:
        if self.postgres is not None:
            return pg_logs.PostgresLogStore(self.postgres)
        assert self.sqlite is not None
        return logs.LogStore(self.sqlite)

    async def append_logs(self, runner_id: str, batch: list[LogEvent]) -> None:
        """Store log events as the engine's event application does, in one transaction."""
        if self.postgres is not None:
            entries = [
                chunks.LogEntry(
                    e.seq, e.at.timestamp(), chunks.LEVELS[e.level], e.message, e.job_id, e.step, e.stream, e.attempt
                )
                for e in batch
            ]
            async with self.postgres.transaction() as conn:
                await pg_logs.append_log_lines(conn, runner_id, entries)
            return
        assert self.sqlite is not None
        applied: list[AgentEvent] = list(batch)
        await self.sqlite.run(lambda conn: events.apply(conn, runner_id, applied))


def spec(name: str = "j", **extra: Any) -> JobSubmission:
    return JobSubmission.model_validate({"name": name, "steps": [{"name": "s", "run": "true"}], **extra})


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2``, … (the test SQL has no ``?`` in literals)."""
    count = iter(range(1, 1000))
    return _MARK.sub(lambda _: f"${next(count)}", sql)


@contextlib.asynccontextmanager
async def _opened(kind: str, url: str | None, path: Path | None) -> AsyncIterator[Engine]:
    if kind == "postgresql":
        assert url is not None
        database = PostgresDatabase(url, max_size=4, migrations=POSTGRES_MIGRATIONS)
        await database.open()
        try:
            yield Engine(kind, postgres=database)
        finally:
            await database.close()
        return
    assert path is not None
    sqlite_db = Database(path, MIGRATIONS)
    await sqlite_db.open()
    try:
        yield Engine(kind, sqlite=sqlite_db)
    finally:
        await sqlite_db.close()


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    async with _opened(request.param, url, tmp_path / "coordinator.db") as opened:
        yield opened
