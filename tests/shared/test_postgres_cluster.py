"""The session's PostgreSQL server: every test that asks for a database gets its own, empty, on loopback."""

from __future__ import annotations

import asyncpg

from tests.postgres_support import Cluster


async def test_each_test_database_is_fresh_and_reachable_over_loopback(postgres_cluster: Cluster) -> None:
    first, second = postgres_cluster.create_database(), postgres_cluster.create_database()
    assert first != second and "@127.0.0.1:" in first
    conn = await asyncpg.connect(first)
    try:
        await conn.execute("CREATE TABLE marker (id int)")
        assert await conn.fetchval("SELECT current_setting('listen_addresses')") == "127.0.0.1"
    finally:
        await conn.close()
    other = await asyncpg.connect(second)
    try:
        assert await other.fetchval("SELECT to_regclass('marker')") is None
    finally:
        await other.close()
