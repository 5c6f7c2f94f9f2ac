"""The database hand-off: operations asked for in one loop turn reach the thread together, in order, each its own
transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from shared.sqlite import Database

SCHEMA = ["CREATE TABLE items (n INTEGER PRIMARY KEY)"]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "t.db", SCHEMA)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


def insert(n: int) -> Callable[[sqlite3.Connection], int]:
    def op(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO items (n) VALUES (?)", (n,))
        return n

    return op


def numbers(conn: sqlite3.Connection) -> list[int]:
    return [int(r[0]) for r in conn.execute("SELECT n FROM items ORDER BY rowid")]


async def test_one_turn_is_one_handoff_in_order_with_failures_kept_apart(db: Database) -> None:
    before = db.handoffs
    results = await asyncio.gather(
        db.run(insert(1)),
        db.run(insert(1)),  # a duplicate: fails alone
        db.read(numbers),
        db.run(insert(2)),
        return_exceptions=True,
    )
    assert db.handoffs == before + 1
    assert results[0] == 1 and results[3] == 2
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert results[2] == [1]  # the read ran after the writes queued before it, and before the later one
    assert await db.read(numbers) == [1, 2]


async def test_operations_asked_for_during_a_handoff_follow_it_together(db: Database) -> None:
    started = asyncio.Event()
    release = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def slow(conn: sqlite3.Connection) -> None:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(asyncio.wait_for(asyncio.shield(release), 10), loop).result()

    first = asyncio.ensure_future(db.run(slow))
    await started.wait()
    before = db.handoffs
    later = [asyncio.ensure_future(db.run(insert(n))) for n in range(3, 8)]
    await asyncio.sleep(0)
    assert db.handoffs == before  # nothing overtakes the hand-off in flight
    release.set_result(None)
    await first
    assert await asyncio.gather(*later) == [3, 4, 5, 6, 7]
    assert db.handoffs == before + 1
    assert await db.read(numbers) == [3, 4, 5, 6, 7]


async def test_close_waits_for_what_was_queued_before_it(tmp_path: Path) -> None:
    database = Database(tmp_path / "c.db", SCHEMA)
    await database.open()
    pending = asyncio.ensure_future(database.run(insert(9)))
    await asyncio.sleep(0)
    await database.close()
    assert await pending == 9


async def test_writes_of_one_handoff_share_a_commit_and_a_failed_one_leaves_no_trace(db: Database) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items (n) VALUES (50)")
        raise ValueError("changed its mind")

    results = await asyncio.gather(
        db.run(insert(40)), db.run(half_then_fail), db.run(insert(60)), return_exceptions=True
    )
    assert results[0] == 40 and results[2] == 60
    assert isinstance(results[1], ValueError)
    assert await db.read(numbers) == [40, 60]  # the failed write's own insert was rolled back with it
