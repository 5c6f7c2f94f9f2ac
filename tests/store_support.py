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
from cryptography.fernet import Fernet

from coordinator.sealing import Sealer
from coordinator.store.base import Store

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
