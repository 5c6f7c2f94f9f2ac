"""Logs stored as chunks: what readers see is what one row per entry would show, at every chunk boundary.

Entries go in as agents send them (``POST /runners/{id}/events``); what comes out is checked against a plain
list filtered in Python. The entries are laid out so chunks end at every kind of boundary: a full chunk, a job
or step change, and a page or a resume point in the middle of a chunk.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from coordinator.store import chunks
from coordinator.store.chunks import CHUNK_MAX_LINES, LogEntry, LogFilter
from coordinator.store.schema import MIGRATIONS
from shared.sqlite import Database
from tests.conftest import CoordinatorHandle, coordinator_config, running_coordinator
from tests.coordinator.test_logs import T0, Runner, Stream, at, open_stream, page, seqs
from tests.helpers import wait_for

__all__ = ["open_stream"]  # the fixture, shared with test_logs

LEVELS = ("debug", "info", "warn", "error")
COUNT = 3 * CHUNK_MAX_LINES + 100


def layout(seq: int) -> dict[str, Any]:
    """Entry ``seq``: two jobs taking turns every 700 entries, three steps, every level, some about no job."""
    if seq % 500 == 0:
        return {"job_id": None, "stream": "system", "level": "warn"}
    return {
        "job_id": "job_a" if (seq // 700) % 2 == 0 else "job_b",
        "step": ("build", "test", "deploy")[(seq // 250) % 3],
        "level": LEVELS[seq % 7 % 4],
        "stream": "stderr" if seq % 7 == 3 else "stdout",
        "attempt": 1,
    }


def reference(where: dict[str, Any]) -> list[int]:
    """The seqs the filter matches, computed over the plain list."""
    minimum = LEVELS.index(where["level"]) if "level" in where else 0
    found = []
    for seq in range(1, COUNT + 1):
        entry = layout(seq)
        ts = T0 + seq
        if "since" in where and ts < T0 + where["since"]:
            continue
        if "until" in where and ts >= T0 + where["until"]:
            continue
        if LEVELS.index(entry["level"]) < minimum:
            continue
        if "job_id" in where and entry.get("job_id") != where["job_id"]:
            continue
        if "step" in where and entry.get("step") != where["step"]:
            continue
        found.append(seq)
    return found


async def chunk_rows(coord: CoordinatorHandle, runner_id: str) -> list[tuple[int, int, int]]:
    """(first_seq, last_seq, line_count) of a runner's chunks, in order."""

    def op(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
        rows = conn.execute(
            "SELECT first_seq, last_seq, line_count FROM log_chunks WHERE runner_id = ? ORDER BY first_seq",
            (runner_id,),
        )
        return [(int(r[0]), int(r[1]), int(r[2])) for r in rows]

    return await coord.store.db.read(op)


@pytest.fixture
async def coord(tmp_path: Path) -> AsyncIterator[CoordinatorHandle]:
    config = coordinator_config(tmp_path / "coordinator", log_stream={"keepalive_interval": 0.1})
    async with running_coordinator(config) as handle:
        yield handle


async def register(coord: CoordinatorHandle, name: str = "logs") -> Runner:
    status, body = await coord.api.post(
        "/runners/register", {"name": name, "type": "native", "host": "127.0.0.1", "port": 9}
    )
    assert status == 201, body
    return Runner(body["runner_id"], coord.client(body["registration_token"]))


@pytest.fixture
async def runner(coord: CoordinatorHandle) -> Runner:
    return await register(coord)


@pytest.fixture
async def laid_out(coord: CoordinatorHandle, runner: Runner) -> Runner:
    for start in range(1, COUNT + 1, 900):  # batches that end mid-chunk
        await runner.send(*[{"seq": seq, **layout(seq)} for seq in range(start, min(start + 900, COUNT + 1))])
    return runner


FILTERS: list[dict[str, Any]] = [
    {},
    {"since": 1000},
    {"until": 2100},
    {"since": 1000, "until": 2100},
    {"level": "warn"},
    {"level": "error"},
    {"job_id": "job_b"},
    {"step": "test"},
    {"job_id": "job_a", "step": "deploy", "level": "info"},
    {"job_id": "job_a", "since": 1500, "level": "warn"},
]


def query_of(where: dict[str, Any]) -> dict[str, Any]:
    return {key: at(value) if key in ("since", "until") else value for key, value in where.items()}


# --- the page --------------------------------------------------------------------------------------------------


async def test_chunks_hold_many_entries_in_disjoint_ranges(coord: CoordinatorHandle, laid_out: Runner) -> None:
    rows = await chunk_rows(coord, laid_out.id)
    assert sum(count for _, _, count in rows) == COUNT
    assert len(rows) < COUNT // 50  # many entries per row, not one
    assert all(count <= CHUNK_MAX_LINES for _, _, count in rows)
    assert all(first <= last < nxt for (first, last, _), (nxt, _, _) in itertools.pairwise(rows))


@pytest.mark.parametrize("where", FILTERS, ids=lambda w: urlencode(w) or "none")
async def test_pages_across_chunks_match_one_row_per_entry(
    coord: CoordinatorHandle, laid_out: Runner, where: dict[str, Any]
) -> None:
    expected = reference(where)
    query = query_of(where)
    for limit in (1, 7, 1000, 2500, 10_000):
        # Without since: the most recent `limit`; with it: the first `limit` from then on. In order either way.
        body = await page(coord, laid_out, limit=limit, **query)
        want = expected[:limit] if "since" in where else expected[-limit:]
        assert seqs(body) == want, (where, limit)
        assert body["total_count"] == len(expected)
        assert body["has_more"] is (len(expected) > limit)


async def test_entries_keep_every_field(coord: CoordinatorHandle, laid_out: Runner) -> None:
    body = await page(coord, laid_out, since=at(CHUNK_MAX_LINES - 1), limit=3)
    for entry in body["logs"]:
        seq = entry["seq"]
        fields = layout(seq)
        assert entry["timestamp"] == at(seq)
        assert entry["level"] == fields["level"]
        assert entry["message"] == f"line {seq}"
        assert entry["context"] == {
            "job_id": fields.get("job_id"),
            "step": fields.get("step"),
            "stream": fields["stream"],
            "attempt": fields.get("attempt"),
        }


# --- exactly once -------------------------------------------------------------------------------------------------


async def test_a_resent_batch_is_stored_once(coord: CoordinatorHandle, runner: Runner) -> None:
    batch = [{"seq": seq, "job_id": "job_1"} for seq in range(1, 101)]
    await runner.send(*batch)
    await runner.send(*batch)  # its acknowledgement was lost: resent whole
    await runner.send(*[{"seq": seq, "job_id": "job_1"} for seq in range(50, 151)])  # overlapping
    body = await page(coord, runner, limit=1000)
    assert seqs(body) == list(range(1, 151)) and body["total_count"] == 150
    rows = await chunk_rows(coord, runner.id)
    assert sum(count for _, _, count in rows) == 150


async def test_small_batches_share_a_chunk(coord: CoordinatorHandle, runner: Runner) -> None:
    for _ in range(60):  # a slow step: a line per batch
        await runner.send({"job_id": "job_1", "step": "build"})
    assert len(await chunk_rows(coord, runner.id)) == 1
    assert seqs(await page(coord, runner, limit=5)) == [56, 57, 58, 59, 60]


# --- the stream ---------------------------------------------------------------------------------------------------


async def test_last_event_id_resumes_in_the_middle_of_a_chunk(
    coord: CoordinatorHandle, laid_out: Runner, open_stream: Any
) -> None:
    resume = CHUNK_MAX_LINES + 300
    rows = await chunk_rows(coord, laid_out.id)
    assert any(first < resume < last for first, last, _ in rows)  # the point is inside a chunk
    stream = await open_stream(laid_out, headers={"Last-Event-ID": str(resume)}, job_id="job_b")
    want = [seq for seq in reference({"job_id": "job_b"}) if seq > resume]
    assert [int(e.id) for e in await stream.take(len(want))] == want
    await laid_out.send({"job_id": "job_b", "step": "test"})
    assert [e.data["seq"] for e in await stream.take(1)] == [COUNT + 1]


# --- upgrading a database with one row per entry ---------------------------------------------------------------


async def test_an_old_database_is_upgraded_and_its_logs_read(tmp_path: Path) -> None:
    state = tmp_path / "coordinator"
    old = Database(state / "coordinator.db", MIGRATIONS[:6])  # the schema before chunks
    await old.open()
    count = CHUNK_MAX_LINES + 16  # 1040

    def fill(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO runners (id, name, type, status, host, port, capabilities, tags, metadata, resources,"
            " token, registered_at, last_seen, heartbeat_interval, load, event_seq) VALUES ('runner_old', 'old',"
            " 'native', 'inactive', '127.0.0.1', 9, '[]', '[]', '{}', '{}', 'tok', 1, 1, 10, '{}', ?)",
            (count,),
        )
        conn.executemany(
            "INSERT INTO log_entries (runner_id, seq, ts, level, message, job_id, step, stream, attempt)"
            " VALUES ('runner_old', ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    seq,
                    T0 + seq,
                    40 if seq % 10 == 0 else 20,
                    f'old line {seq} \u00e9\n"q"',
                    "job_old",
                    "build",
                    "stdout",
                    1,
                )
                for seq in range(1, count + 1)
            ],
        )

    await old.run(fill)
    await old.close()
    async with running_coordinator(coordinator_config(state)) as coord:
        status, body = await coord.api.get(f"/runners/runner_old/logs?{urlencode({'limit': 3, 'level': 'error'})}")
        assert status == 200, body
        assert seqs(body) == [count - 20, count - 10, count] and body["total_count"] == count // 10
        assert body["logs"][-1]["message"] == f'old line {count} \u00e9\n"q"'
        assert body["logs"][-1]["context"] == {"job_id": "job_old", "step": "build", "stream": "stdout", "attempt": 1}
        status, body = await coord.api.get(f"/runners/runner_old/logs?{urlencode({'since': at(1), 'limit': 10_000})}")
        assert seqs(body) == list(range(1, count + 1))
        tables = await coord.store.db.read(
            lambda conn: {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        )
        assert "log_entries" not in tables and "log_chunks" in tables


# --- retention ------------------------------------------------------------------------------------------------


async def stored_bytes(coord: CoordinatorHandle, job_id: str | None = None) -> int:
    clause, params = ("WHERE job_id = ?", (job_id,)) if job_id else ("", ())
    return int(
        await coord.store.db.read(
            lambda conn: conn.execute(f"SELECT COALESCE(SUM(bytes), 0) FROM log_chunks {clause}", params).fetchone()[0]
        )
    )


LONG = "x" * 200


async def test_a_job_past_its_limit_loses_its_oldest_chunks(tmp_path: Path) -> None:
    limit = 512 * 1024
    config = coordinator_config(
        tmp_path / "coordinator",
        logs={"max_bytes_per_job": limit, "retention_interval": 0.05},
        log_stream={"keepalive_interval": 0.1},
    )
    async with running_coordinator(config) as coord:
        runner = await register(coord)
        await runner.send(*[{"job_id": "job_small", "message": "small"} for _ in range(10)])
        await runner.lines(6000, job_id="job_big", message=LONG)  # about 1.5 MB
        await wait_for(lambda: _at_most(stored_bytes(coord, "job_big"), limit), 10, what="the big job within its limit")
        # The newest lines are kept and the page simply begins at the oldest one kept.
        body = await page(coord, runner, job_id="job_big", since=at(0), limit=10_000)
        kept = seqs(body)
        assert kept[-1] == 6010 and kept == list(range(kept[0], 6011)) and kept[0] > 11
        assert body["total_count"] == len(kept)
        # The small job is untouched.
        assert seqs(await page(coord, runner, job_id="job_small")) == list(range(1, 11))
        # A follower resuming before the oldest kept line resumes at it.
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{coord.api_url}/runners/{runner.id}/logs",
                params={"follow": "true", "job_id": "job_big"},
                headers={"X-API-Key": coord.api.api_key or "", "Last-Event-ID": "5"},
            ) as response,
        ):
            assert [int(e.id or 0) for e in await Stream(response).take(3)] == kept[:3]


async def _at_most(size: Any, limit: int) -> bool:
    return bool(await size <= limit)


async def test_all_logs_past_the_total_limit_lose_the_oldest_chunks(tmp_path: Path) -> None:
    limit = 512 * 1024
    config = coordinator_config(tmp_path / "coordinator", logs={"max_total_bytes": limit, "retention_interval": 0.05})
    async with running_coordinator(config) as coord:
        first, second = await register(coord, "first"), await register(coord, "second")
        # The first runner's lines are older (T0 + seq) than the second's (stamped later).
        await first.lines(3000, job_id="job_1", message=LONG)  # about 750 kB
        await second.send(*[{"job_id": "job_2", "message": LONG, "at": at(10_000 + seq)} for seq in range(1, 1501)])
        await wait_for(lambda: _at_most(stored_bytes(coord), limit), 10, what="the logs within the total limit")
        # The second runner's newer log is whole; the first runner's older one went first.
        assert (await page(coord, second, limit=1))["total_count"] == 1500
        assert 0 < (await page(coord, first, limit=1))["total_count"] < 3000


# --- the codec --------------------------------------------------------------------------------------------------


def test_a_body_decodes_to_the_entries_it_was_made_of() -> None:
    entries = [
        LogEntry(1, T0 + 0.125, 20, "plain", "job_1", "build", "stdout", 1),
        LogEntry(
            2, T0 + 0.25, 30, 'quotes " and \\ and \n newlines, \u00e9 \u2603 \U0001f600', "job_1", "build", "stderr", 1
        ),
        LogEntry(5, T0 + 1.0, 40, "", "job_1", "build", "system", None),
    ]
    chunk = chunks.Chunk.of_entries(entries)
    assert chunk.entries() == entries
    assert (chunk.first_seq, chunk.last_seq, chunk.line_count) == (1, 5, 3)
    assert (chunk.first_ts, chunk.last_ts, chunk.min_level, chunk.max_level) == (T0 + 0.125, T0 + 1.0, 20, 40)
    assert chunk.bytes == len(chunk.body.encode())
    assert chunk.body.startswith('[[1,1700000000.125,20,"stdout",1,"plain"],')


def test_chunks_end_where_the_job_or_step_changes_or_they_are_full() -> None:
    def entry(seq: int, job: str | None, step: str | None) -> LogEntry:
        return LogEntry(seq, T0 + seq, 20, "m", job, step, "stdout", 1)

    entries = [entry(s, "a", "one") for s in range(1, 4)] + [entry(4, "a", "two"), entry(5, "b", "two")]
    entries += [entry(s, None, None) for s in range(6, 6 + CHUNK_MAX_LINES + 1)]
    grown, made = chunks.chunked(chunks.runs(entries))
    assert grown is None
    assert [(c.first_seq, c.last_seq, c.job_id, c.step) for c in made] == [
        (1, 3, "a", "one"),
        (4, 4, "a", "two"),
        (5, 5, "b", "two"),
        (6, 5 + CHUNK_MAX_LINES, None, None),
        (6 + CHUNK_MAX_LINES, 6 + CHUNK_MAX_LINES, None, None),
    ]
    # A small newest chunk of the same job and step grows instead.
    grown, made = chunks.chunked(chunks.runs([entry(100, "a", "one")]), after=made[0])
    assert made == [] and grown is not None and [e.seq for e in grown.entries()] == [1, 2, 3, 100]


def test_a_filter_judges_chunks_from_their_index_columns() -> None:
    chunk = chunks.Chunk.of_entries(
        [LogEntry(s, T0 + s, 20 + 10 * (s % 2), "m", "j", "s", "stdout", 1) for s in range(10)]
    )
    where = LogFilter(since=T0 + 5, min_level=30)
    assert where.filters_lines
    assert [e.seq for e in chunks.take([chunk], where, 10, oldest_first=True)] == [5, 7, 9]
    assert [e.seq for e in chunks.take([chunk], where, 2, oldest_first=False)] == [7, 9]
    assert chunks.count_partial([chunk], where) == 3
    assert not LogFilter(job_id="j", step="s").filters_lines
