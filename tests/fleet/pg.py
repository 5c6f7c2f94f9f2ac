"""PostgreSQL for the fleet tests: the fleet tables and a pool the fleet modules take as their ``Connections``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from coordinator.bus import FLEET_MESSAGES_DDL

# The same layout as the fleet tables of the PostgreSQL store's schema (CREATE ... IF NOT EXISTS: both may run).
FLEET_TABLES = """
CREATE TABLE IF NOT EXISTS fleet_settings (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS rate_limit_counters (
    key text, window_start bigint, count bigint, PRIMARY KEY (key, window_start)
);
CREATE TABLE IF NOT EXISTS coordinator_channels (
    runner_id text PRIMARY KEY, coordinator_id text NOT NULL, since double precision NOT NULL
);
"""


async def create_fleet_tables(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(FLEET_TABLES)
        await conn.execute(FLEET_MESSAGES_DDL)
    finally:
        await conn.close()


class Pool:
    """An asyncpg pool with the ``coordinator.pg.Connections`` shape."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> Pool:
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4)
        return self

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            yield conn


@contextlib.asynccontextmanager
async def fleet_database(url: str) -> AsyncIterator[Pool]:
    """The fleet tables on ``url`` and a pool on it, closed however the block ends."""
    await create_fleet_tables(url)
    pool = await Pool(url).open()
    try:
        yield pool
    finally:
        await pool.close()
