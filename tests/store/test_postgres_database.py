"""The PostgreSQL database: a bounded pool, and a schema migrated exactly once however many coordinators start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from coordinator.migrate_store import RUN_TIME_TABLES
from coordinator.store.postgres.database import PostgresDatabase
from coordinator.store.postgres.schema import MIGRATIONS
from coordinator.store.schema import MIGRATIONS as SQLITE_MIGRATIONS
from shared.config import ConfigError
from shared.errors import StorageUnavailable
from shared.sqlite import Database
from tests.helpers import free_port


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row["tablename"] for row in rows}
    finally:
        await conn.close()


async def test_three_databases_opened_at_once_migrate_exactly_once(postgres_url: str) -> None:
    databases = [PostgresDatabase(postgres_url, min_size=1, max_size=2) for _ in range(3)]
    with capture_logs() as logs:
        await asyncio.gather(*(db.open() for db in databases))
    try:
        migrated = [entry["version"] for entry in logs if entry["event"] == "database migrated"]
        assert migrated == list(range(1, len(MIGRATIONS) + 1))
        for db in databases:
            async with db.connection() as conn:
                versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY 1")]
            assert versions == list(range(1, len(MIGRATIONS) + 1))
        # A fourth, started later, finds nothing left to do.
        late = PostgresDatabase(postgres_url)
        with capture_logs() as logs:
            await late.open()
        await late.close()
        assert not [entry for entry in logs if entry["event"] == "database migrated"]
    finally:
        await asyncio.gather(*(db.close() for db in databases))


async def test_every_sqlite_table_has_a_postgresql_table_of_the_same_name(postgres_url: str, tmp_path: Path) -> None:
    db = PostgresDatabase(postgres_url)
    await db.open()
    await db.close()
    sqlite = Database(tmp_path / "coordinator.db", SQLITE_MIGRATIONS)
    await sqlite.open()
    try:
        sqlite_tables = set(
            await sqlite.read(
                lambda conn: [
                    r[0]
                    for r in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                    )
                ]
            )
        )
    finally:
        await sqlite.close()
    assert "log_chunks" in sqlite_tables
    assert sqlite_tables == await _tables(postgres_url) - set(RUN_TIME_TABLES)
    assert {"fleet_settings", "rate_limit_counters", "coordinator_channels", "schema_version"} <= await _tables(
        postgres_url
    )


async def test_a_transaction_commits_whole_or_not_at_all(postgres_url: str) -> None:
    db = PostgresDatabase(postgres_url)
    await db.open()
    try:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO fleet_settings (name, value) VALUES ('a', '1')")
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO fleet_settings (name, value) VALUES ('b', '2')")
                raise RuntimeError("the operation failed half-way")
        async with db.connection() as conn:
            assert [r["name"] for r in await conn.fetch("SELECT name FROM fleet_settings ORDER BY 1")] == ["a"]
        # A constraint violation is the caller's error, not the storage's.
        with pytest.raises(asyncpg.UniqueViolationError):
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO fleet_settings (name, value) VALUES ('a', '3')")
        assert await db.storage_problem() is None
    finally:
        await db.close()


async def test_a_server_that_is_gone_is_storage_unavailable(postgres_url: str) -> None:
    db = PostgresDatabase(postgres_url)
    await db.open()
    await db.close()
    # Closed: operations are refused as unavailable storage, not with an internal error.
    with pytest.raises(StorageUnavailable):
        async with db.transaction():
            pass
    # Nothing there, or no such database: the coordinator stops with one line naming it (not the password).
    for url in (f"postgresql://postgres:pw@127.0.0.1:{free_port()}/none", postgres_url.rsplit("/", 1)[0] + "/nosuch"):
        with pytest.raises(ConfigError, match="cannot be used") as refused:
            await PostgresDatabase(url).open()
        assert ":pw@" not in str(refused.value)


async def test_a_database_with_a_newer_schema_is_refused(postgres_url: str) -> None:
    current = PostgresDatabase(postgres_url)
    await current.open()
    await current.close()
    older = PostgresDatabase(postgres_url, migrations=MIGRATIONS[:-1])
    with pytest.raises(ConfigError, match="newer than this release"):
        await older.open()


async def _read_only(url: str, on: bool) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET default_transaction_read_only = off")
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}')
    finally:
        await conn.close()


async def test_a_read_only_database_is_reported_until_it_accepts_writes_again(postgres_url: str) -> None:
    db = PostgresDatabase(postgres_url)
    await db.open()
    try:
        await _read_only(postgres_url, True)
        await db.pool.expire_connections()
        with pytest.raises(StorageUnavailable):
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO fleet_settings (name, value) VALUES ('a', '1')")
        assert await db.storage_problem() is not None
        assert await db.storage_problem() is not None  # re-checked, still read-only
        await _read_only(postgres_url, False)
        await db.pool.expire_connections()
        assert await db.storage_problem() is None
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO fleet_settings (name, value) VALUES ('a', '1')")
    finally:
        await db.close()


async def test_a_deadlock_between_writers_is_refused_for_retry_and_not_a_storage_problem(postgres_url: str) -> None:
    db = PostgresDatabase(postgres_url, min_size=2, max_size=2)
    await db.open()
    try:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO fleet_settings (name, value) VALUES ('a', ''), ('b', '')")
        locked = {"a": asyncio.Event(), "b": asyncio.Event()}

        async def writer(mine: str, theirs: str) -> None:
            async with db.transaction() as conn:
                await conn.execute("UPDATE fleet_settings SET value = 'x' WHERE name = $1", mine)
                locked[mine].set()
                await locked[theirs].wait()
                await conn.execute("UPDATE fleet_settings SET value = 'y' WHERE name = $1", theirs)

        results = await asyncio.gather(writer("a", "b"), writer("b", "a"), return_exceptions=True)
        refused = [r for r in results if isinstance(r, StorageUnavailable)]
        assert len(refused) == 1 and results.count(None) == 1, results
        assert "retry" in str(refused[0])
        assert await db.storage_problem() is None
    finally:
        await db.close()
