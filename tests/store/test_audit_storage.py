"""The audit trail's PostgreSQL storage: batches in order, newest first with every filter and paging, retention,
the principals already seen, and two coordinators writing one trail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from coordinator.audit import FIRST_USE, Record
from coordinator.store.postgres.audit import PostgresAuditStorage
from coordinator.store.postgres.database import PostgresDatabase
from shared.timeutil import from_epoch

T0 = 1_700_000_000.0


def record(ts: float, principal: str = "key:ops", action: str = "runner.register", status: int = 201) -> Record:
    return Record(
        ts=ts,
        principal=principal,
        role="operator",
        client="127.0.0.1",
        action=action,
        method="POST",
        path="/api/runners/register",
        runner_id=None,
        job_id=None,
        status=status,
        detail=f"at={ts}",
    )


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[PostgresDatabase]:
    db = PostgresDatabase(postgres_url, max_size=4)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


async def test_entries_read_newest_first_with_filters_and_pages(database: PostgresDatabase) -> None:
    storage = PostgresAuditStorage(database)
    await storage.append([record(T0 + i, "key:ops" if i % 3 else "user:ada") for i in range(10)])
    await storage.append([record(T0 + 10, "anonymous", status=401), record(T0 + 11, "key:ops", status=500)])
    await storage.append([])

    entries, total = await storage.query(None, None, None, 100, 0)
    assert total == 12 and [e.timestamp for e in entries] == [from_epoch(T0 + i) for i in reversed(range(12))]
    assert [e.id for e in entries] == sorted((e.id for e in entries), reverse=True)
    newest = entries[0]
    assert (newest.principal, newest.role, newest.client, newest.action, newest.method, newest.path) == (
        "key:ops",
        "operator",
        "127.0.0.1",
        "runner.register",
        "POST",
        "/api/runners/register",
    )
    assert (newest.status, newest.outcome, newest.detail, newest.runner_id) == (500, "failed", f"at={T0 + 11}", None)
    assert entries[1].outcome == "refused" and entries[2].outcome == "success"

    page, total = await storage.query(None, None, None, 3, 2)
    assert total == 12 and [e.id for e in page] == [e.id for e in entries[2:5]]
    ada, total = await storage.query(None, None, "user:ada", 100, 0)
    assert total == 4 and {e.principal for e in ada} == {"user:ada"}
    window, total = await storage.query(T0 + 2, T0 + 5, None, 100, 0)  # both ends inclusive
    assert total == 4 and [e.timestamp for e in window] == [from_epoch(T0 + i) for i in (5, 4, 3, 2)]
    both, total = await storage.query(T0 + 2, T0 + 5, "key:ops", 1, 1)
    assert total == 3 and [e.timestamp for e in both] == [from_epoch(T0 + 4)]
    assert await storage.query(None, T0 - 1, None, 10, 0) == ([], 0)


async def test_retention_and_the_principals_already_seen(database: PostgresDatabase) -> None:
    storage = PostgresAuditStorage(database)
    assert await storage.first_used() == set()
    await storage.append(
        [
            record(T0, "key:ops", FIRST_USE, 200),
            record(T0 + 1, "key:ops"),
            record(T0 + 2, "user:ada", FIRST_USE, 200),
            record(T0 + 3, "runner:r1"),
        ]
    )
    assert await storage.first_used() == {"key:ops", "user:ada"}
    assert await storage.prune(T0 + 2) == 2
    entries, total = await storage.query(None, None, None, 10, 0)
    assert total == 2 and [e.principal for e in entries] == ["runner:r1", "user:ada"]
    assert await storage.prune(T0 + 2) == 0


async def test_two_coordinators_appending_at_once_keep_every_entry_once_in_each_batchs_order(
    database: PostgresDatabase, postgres_url: str
) -> None:
    other = PostgresDatabase(postgres_url, max_size=4)
    await other.open()
    try:
        first, second = PostgresAuditStorage(database), PostgresAuditStorage(other)

        async def write(storage: PostgresAuditStorage, principal: str) -> None:
            for batch in range(20):
                await storage.append([record(T0 + batch * 10 + i, principal) for i in range(10)])

        await asyncio.gather(write(first, "key:a"), write(second, "key:b"))
        for principal in ("key:a", "key:b"):
            entries, total = await second.query(None, None, principal, 1000, 0)
            assert total == 200
            assert [e.timestamp for e in entries] == [from_epoch(T0 + i) for i in reversed(range(200))]
    finally:
        await other.close()
