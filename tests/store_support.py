"""One store database under test, on either engine: open stores on it, and read what they committed.

The ``store_database`` fixture (``tests/conftest.py``) gives a :class:`StoreDatabase` for each engine in
:data:`ENGINES`; the ``postgresql`` case uses a fresh database of the session's server (``postgres_url``).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.fernet import Fernet

from coordinator.sealing import Sealer
from coordinator.store.base import Store
from coordinator.store.logs import LogFilter

ENGINES = ("sqlite", "postgresql")


class StoreDatabase:
    def __init__(self, engine: str, location: str) -> None:
        self.engine = engine
        self.location = location
        """The SQLite file, or the PostgreSQL URL."""
        self.sealer = Sealer(Fernet.generate_key())
        self._closers: list[Any] = []

    async def open(self) -> Store:
        """A new store on this database (as a second coordinator, or a restarted one, would open)."""
        if self.engine == "sqlite":
            from coordinator.store.sqlite import SqliteStore

            sqlite_store = SqliteStore(Path(self.location), self.sealer)
            await sqlite_store.open()
            self._closers.append(sqlite_store.close)
            return sqlite_store
        from coordinator.store.postgres.database import PostgresDatabase
        from coordinator.store.postgres.registry import PostgresStore

        db = PostgresDatabase(self.location, min_size=1, max_size=4)
        await db.open()
        self._closers.append(db.close)
        postgres_store = PostgresStore(db, self.sealer)
        await postgres_store.open()
        self._closers.append(postgres_store.close)
        return postgres_store

    async def close(self) -> None:
        """Close every store opened here (newest first)."""
        while self._closers:
            await self._closers.pop()()

    async def log_messages(self, runner_id: str) -> list[str]:
        """The runner's stored log lines, oldest first, read through the engine's log store."""
        everything = LogFilter()
        if self.engine == "sqlite":
            from coordinator.store.logs import LogStore
            from coordinator.store.schema import MIGRATIONS
            from shared.sqlite import Database

            db = Database(Path(self.location), MIGRATIONS)
            await db.open()
            try:
                page = await LogStore(db).page(runner_id, everything, 100_000, oldest_first=True)
            finally:
                await db.close()
            return [entry.message for entry in page.entries]
        try:
            from coordinator.store.postgres.logs import PostgresLogStore  # type: ignore[attr-defined]
        except ImportError:  # only the write side so far: one row per line
            conn = await asyncpg.connect(self.location)
            try:
                rows = await conn.fetch("SELECT message FROM log_entries WHERE runner_id = $1 ORDER BY seq", runner_id)
            finally:
                await conn.close()
            return [row["message"] for row in rows]
        from coordinator.store.postgres.database import PostgresDatabase

        pg = PostgresDatabase(self.location, min_size=1, max_size=1)
        await pg.open()
        try:
            page = await PostgresLogStore(pg).page(runner_id, everything, 100_000, oldest_first=True)
        finally:
            await pg.close()
        return [entry.message for entry in page.entries]

    async def scalar(self, sql: str, *args: Any) -> Any:
        """The first column of the first row of a query (``?`` placeholders), read from what was committed."""
        if self.engine == "sqlite":
            conn = sqlite3.connect(self.location)
            try:
                row = conn.execute(sql, args).fetchone()
            finally:
                conn.close()
            return None if row is None else row[0]
        numbered = iter(range(1, len(args) + 1))
        conn_pg = await asyncpg.connect(self.location)
        try:
            return await conn_pg.fetchval(re.sub(r"\?", lambda _: f"${next(numbered)}", sql), *args)
        finally:
            await conn_pg.close()


def engine_parameter(request: pytest.FixtureRequest) -> str:
    """The ``database_engine`` of a directory whose ``coordinator`` tests run on each engine (a fixture there,
    parametrised over :data:`ENGINES`); a test marked ``sqlite_only`` runs on SQLite alone (``tests/conftest.py``
    leaves the other case out when collecting)."""
    return str(request.param)
