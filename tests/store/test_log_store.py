"""Log storage and queries on both engines: pages from either end, filters, resume after a sequence, the last
sequence, across chunk boundaries on PostgreSQL; its chunk layout, retention and the migration from one row per
entry."""

from __future__ import annotations

import asyncpg
import pytest

from coordinator.store.chunks import CHUNK_MAX_LINES, LogFilter
from coordinator.store.postgres import logs as pg_logs
from coordinator.store.postgres.database import PostgresDatabase
from coordinator.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from shared.models import LogEvent
from shared.timeutil import from_epoch
from tests.store import engines
from tests.store.engines import Engine

engine = engines.engine
T0 = 1_700_000_000.0
LEVELS = ("debug", "info", "warn", "error")
COUNT = 2 * CHUNK_MAX_LINES + 300


def layout(seq: int) -> dict[str, object]:
    """Entry ``seq``: two jobs taking turns every 700 entries, three steps, every level, some about no job."""
    if seq % 500 == 0:
        return {"job_id": None, "step": None, "stream": "system", "level": "warn", "attempt": None}
    return {
        "job_id": "job_a" if (seq // 700) % 2 == 0 else "job_b",
        "step": ("build", "test", "deploy")[(seq // 250) % 3],
        "level": LEVELS[seq % 7 % 4],
        "stream": "stderr" if seq % 7 == 3 else "stdout",
        "attempt": 1,
    }


def event(seq: int) -> LogEvent:
    return LogEvent.model_validate({"seq": seq, "at": from_epoch(T0 + seq), "message": f"line {seq} ✓", **layout(seq)})


def reference(
    since: float | None = None, until: float | None = None, level: str | None = None, **exact: object
) -> list[int]:
    """The seqs a filter matches, over the plain list."""
    minimum = LEVELS.index(level) if level else 0
    found = []
    for seq in range(1, COUNT + 1):
        entry, ts = layout(seq), T0 + seq
        if (since is not None and ts < since) or (until is not None and ts >= until):
            continue
        if LEVELS.index(str(entry["level"])) < minimum:
            continue
        if any(entry[name] != value for name, value in exact.items()):
            continue
        found.append(seq)
    return found


async def store_all(engine: Engine, runner_id: str) -> None:
    """In batches of every size: one entry, a few, more than a chunk holds."""
    seq, sizes = 1, [1, 1, 5, 300, CHUNK_MAX_LINES + 10, 2, 700]
    while seq <= COUNT:
        size = sizes[0] if sizes else 400
        sizes = sizes[1:]
        await engine.append_logs(runner_id, [event(s) for s in range(seq, min(COUNT, seq + size - 1) + 1)])
        seq += size


FILTERS = [
    {},
    {"since": T0 + 600.5, "until": T0 + 1800},
    {"level": "warn"},
    {"job_id": "job_b"},
    {"job_id": "job_a", "step": "test", "level": "info"},
    {"since": T0 + 1000, "level": "error"},
]


@pytest.mark.parametrize("where", FILTERS, ids=lambda w: ",".join(w) or "all")
async def test_pages_from_either_end_and_resume_match_the_plain_list(engine: Engine, where: dict[str, object]) -> None:
    runner_id = await engine.add_runner(T0)
    await store_all(engine, runner_id)
    store = engine.logs()
    expected = reference(**where)  # type: ignore[arg-type]
    levels = {"debug": 10, "info": 20, "warn": 30, "error": 40}
    criteria = {k: v for k, v in where.items() if k != "level"}
    if "level" in where:
        criteria["min_level"] = levels[str(where["level"])]
    wanted = LogFilter(**criteria)

    oldest = await store.page(runner_id, wanted, 50, oldest_first=True)
    assert [e.seq for e in oldest.entries] == expected[:50]
    assert oldest.total_count == len(expected) and oldest.has_more == (len(expected) > 50)
    newest = await store.page(runner_id, wanted, 1100, oldest_first=False)
    assert [e.seq for e in newest.entries] == expected[-1100:]
    middle = expected[len(expected) // 2]
    resumed = await store.after(runner_id, wanted, middle, limit=900)
    assert [e.seq for e in resumed] == [s for s in expected if s > middle][:900]
    assert await store.after(runner_id, wanted, COUNT) == []

    sample = next(e for e in oldest.entries) if oldest.entries else None
    if sample is not None:
        wire = sample.to_wire()
        assert wire["message"] == f"line {sample.seq} ✓"
        assert wire["context"]["job_id"] == layout(sample.seq)["job_id"]
        assert wire["level"] == layout(sample.seq)["level"]


async def test_last_seq_runners_apart_and_a_deleted_runners_logs_go(engine: Engine) -> None:
    store = engine.logs()
    first, second = await engine.add_runner(T0), await engine.add_runner(T0)
    assert await store.last_seq(first) == 0
    await engine.append_logs(first, [event(s) for s in range(1, 11)])
    await engine.append_logs(second, [event(s) for s in range(1, 4)])
    assert (await store.last_seq(first), await store.last_seq(second)) == (10, 3)
    page = await store.page(second, LogFilter(), 100, oldest_first=True)
    assert [e.seq for e in page.entries] == [1, 2, 3]
    await engine.execute("DELETE FROM runners WHERE id = ?", first)
    assert await store.last_seq(first) == 0
    assert (await store.page(first, LogFilter(), 100, oldest_first=True)).total_count == 0


# --- PostgreSQL's chunks ---------------------------------------------------------------------------------------


@pytest.fixture
async def postgres(postgres_url: str) -> Engine:
    database = PostgresDatabase(postgres_url, max_size=2, migrations=engines.POSTGRES_MIGRATIONS)
    await database.open()
    yield Engine("postgresql", postgres=database)  # type: ignore[misc]
    await database.close()


async def test_small_batches_share_a_chunk_and_a_job_or_step_change_starts_one(postgres: Engine) -> None:
    runner_id = await postgres.add_runner(T0)
    for seq in range(1, 41):  # one line per batch, as a slow step prints
        await postgres.append_logs(runner_id, [event(seq)])
    rows = await postgres.rows(
        "SELECT first_seq, last_seq, line_count, job_id, step FROM log_chunks WHERE runner_id = ? ORDER BY first_seq",
        runner_id,
    )
    assert rows == [(1, 40, 40, "job_a", "build")]
    await postgres.append_logs(runner_id, [event(s) for s in range(245, 256)])  # crosses into step "test"
    rows = await postgres.rows(
        "SELECT first_seq, last_seq, step FROM log_chunks WHERE runner_id = ? ORDER BY first_seq", runner_id
    )
    assert rows == [(1, 249, "build"), (250, 255, "test")]
    assert await postgres.value("SELECT SUM(line_count) FROM log_chunks") == 40 + 11


async def test_retention_drops_whole_chunks_oldest_first(postgres: Engine) -> None:
    runner_id = await postgres.add_runner(T0)
    await store_all(postgres, runner_id)
    store = pg_logs.PostgresLogStore(postgres.postgres)  # type: ignore[arg-type]
    sizes = {
        str(job): int(size)
        for job, size in await postgres.rows("SELECT job_id, SUM(bytes) FROM log_chunks GROUP BY job_id")
        if job is not None
    }
    limit = sizes["job_a"] // 2
    dropped = await store.enforce(limit, None, ["job_a"])
    assert dropped.chunks > 0
    kept = int(await postgres.value("SELECT SUM(bytes) FROM log_chunks WHERE job_id = 'job_a'"))
    assert kept <= limit and kept + dropped.bytes == sizes["job_a"]
    assert await postgres.value("SELECT SUM(bytes) FROM log_chunks WHERE job_id = 'job_b'") == sizes["job_b"]
    newest = int(await postgres.value("SELECT MAX(last_seq) FROM log_chunks WHERE job_id = 'job_a'"))
    assert newest == max(reference(job_id="job_a"))  # the newest entries stay
    oldest_kept = int(await postgres.value("SELECT MIN(first_seq) FROM log_chunks WHERE job_id = 'job_a'"))
    page = await store.page(runner_id, LogFilter(job_id="job_a"), 10, oldest_first=True)
    assert page.entries[0].seq == oldest_kept  # no hole: the page begins at the oldest entry kept
    # The total: again oldest first, over every job.
    total = int(await postgres.value("SELECT SUM(bytes) FROM log_chunks"))
    await store.enforce(None, total // 3, None)
    assert int(await postgres.value("SELECT SUM(bytes) FROM log_chunks")) <= total // 3
    assert await store.last_seq(runner_id) == COUNT


async def test_the_migration_turns_each_stored_line_into_a_chunk(postgres_url: str) -> None:
    chunks = next(i for i, m in enumerate(PG_MIGRATIONS) if "CREATE TABLE log_chunks" in m)
    before = PostgresDatabase(postgres_url, max_size=1, migrations=PG_MIGRATIONS[:chunks])  # a release before it
    await before.open()
    old = Engine("postgresql", postgres=before)
    runner_id = await old.add_runner(T0)
    for seq in (1, 2, 3):
        e = event(seq)
        await old.execute(
            "INSERT INTO log_entries (runner_id, seq, ts, level, message, job_id, step, stream, attempt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            runner_id, seq, T0 + seq + 0.25, {"debug": 10, "info": 20, "warn": 30, "error": 40}[e.level],
            e.message + ' "quoted"', e.job_id, e.step, e.stream, e.attempt,
        )  # fmt: skip
    await before.close()
    after = PostgresDatabase(postgres_url, max_size=1, migrations=engines.POSTGRES_MIGRATIONS)
    await after.open()
    try:
        store = pg_logs.PostgresLogStore(after)
        page = await store.page(runner_id, LogFilter(), 10, oldest_first=True)
        assert [(e.seq, e.ts, e.message) for e in page.entries] == [
            (s, T0 + s + 0.25, f'line {s} ✓ "quoted"') for s in (1, 2, 3)
        ]
        async with after.connection() as conn:
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetchval("SELECT COUNT(*) FROM log_entries")
        async with after.transaction() as conn:
            await pg_logs.append_log_lines(
                conn, runner_id, [pg_logs.LogEntry(4, T0 + 4, 20, "next", "job_a", "build", "stdout", 1)]
            )
        assert [e.seq for e in (await store.page(runner_id, LogFilter(), 10, True)).entries] == [1, 2, 3, 4]
    finally:
        await after.close()
