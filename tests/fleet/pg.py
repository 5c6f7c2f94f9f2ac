"""PostgreSQL for the fleet tests: the store's whole schema on the test's database, and its pooled connections
(a ``PostgresDatabase`` is the ``coordinator.pg.Connections`` the fleet modules take)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from coordinator.store.postgres.database import PostgresDatabase


async def create_fleet_tables(url: str) -> None:
    """Migrate ``url`` as a coordinator starting on it would."""
    db = PostgresDatabase(url, max_size=1)
    await db.open()
    await db.close()


@contextlib.asynccontextmanager
async def fleet_database(url: str) -> AsyncIterator[PostgresDatabase]:
    """The schema on ``url`` and a pool on it, closed however the block ends."""
    db = PostgresDatabase(url, max_size=4)
    await db.open()
    try:
        yield db
    finally:
        await db.close()
