"""Job logs on PostgreSQL: chunks written as agents' batches are applied, queries paging within and across chunks.

The row layout (``log_chunks``), the body codec, the chunking rule, the filter predicates and the paging walk are
``coordinator.store.chunks``, shared with the SQLite store (``coordinator.store.logs``); this module is the
PostgreSQL side, and :data:`MIGRATION` is its table.

- :func:`append_log_lines` runs inside the transaction that applies an agent's batch (the registry's event
  application): it extends the runner's newest chunk when that one is small and of the same job and step
  (locking that row, ``FOR UPDATE``) and inserts the rest as new chunks.
- A read is one ``REPEATABLE READ`` read-only transaction, so its count and its page see the same chunks even
  while a batch or a retention pass commits; chunks are read through a server-side cursor, so a page of the newest
  entries of a long log decodes a chunk or two, not the whole log.
- :meth:`PostgresLogStore.enforce` applies ``logs.max_bytes_per_job`` and ``logs.max_total_bytes`` the way the
  SQLite store does (whole chunks, oldest first), each limit in one ``DELETE`` over a running sum.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from coordinator.store.chunks import (
    APPEND_BELOW_BYTES,
    CHUNK_COLUMNS,
    CHUNK_FIELDS,
    SELECT_CHUNK,
    Chunk,
    Dropped,
    LogEntry,
    LogFilter,
    LogPage,
    chunked,
    runs,
    take,
)
from coordinator.store.logs import PAGE
from coordinator.store.postgres.database import Connection, PostgresDatabase
from coordinator.store.postgres.sql import numbered

CURSOR_PREFETCH = 8
"""Chunks fetched per round trip while a page is walked (a chunk holds up to 1,024 entries)."""

MIGRATION = """
CREATE TABLE log_chunks (
    runner_id text NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    job_id text,
    step text,
    first_ts double precision NOT NULL,
    last_ts double precision NOT NULL,
    min_level bigint NOT NULL,
    max_level bigint NOT NULL,
    line_count bigint NOT NULL,
    bytes bigint NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (runner_id, first_seq)
);
CREATE INDEX log_chunks_last ON log_chunks(runner_id, last_seq);
CREATE INDEX log_chunks_job ON log_chunks(job_id, first_seq);
CREATE INDEX log_chunks_age ON log_chunks(last_ts, bytes);
INSERT INTO log_chunks (runner_id, first_seq, last_seq, job_id, step, first_ts, last_ts, min_level, max_level,
                        line_count, bytes, body)
SELECT runner_id, seq, seq, job_id, step, ts, ts, level, level, 1, octet_length(body), body
FROM (SELECT *, json_build_array(json_build_array(seq, ts, level, stream, attempt, message))::text AS body
      FROM log_entries) AS entry;
DROP TABLE log_entries
"""
"""The chunk table (columns as in ``coordinator.store.chunks``), replacing ``log_entries``: each old row becomes
a one-entry chunk (valid chunks; the next batch of the same job and step is appended to the newest)."""

_INSERT = f"INSERT INTO log_chunks ({CHUNK_COLUMNS}) VALUES ({', '.join(f'${i + 1}' for i in range(12))})"
_EXTEND = (
    f"UPDATE log_chunks SET {', '.join(f'{name} = ${i}' for i, name in enumerate(CHUNK_FIELDS[1:], start=1))}"
    f" WHERE runner_id = ${len(CHUNK_FIELDS)} AND first_seq = ${len(CHUNK_FIELDS) + 1}"
)
_PER_JOB = """
DELETE FROM log_chunks c USING (
    SELECT runner_id, first_seq,
           SUM(bytes) OVER (PARTITION BY job_id ORDER BY first_seq DESC ROWS UNBOUNDED PRECEDING) AS newer_bytes
    FROM log_chunks WHERE job_id = ANY($2::text[])
) AS r
WHERE c.runner_id = r.runner_id AND c.first_seq = r.first_seq AND r.newer_bytes > $1
RETURNING c.bytes
"""
"""A job's chunks go, oldest first, while what is left (the chunk and every newer one) is over the limit."""
_TOTAL = """
DELETE FROM log_chunks c USING (
    SELECT runner_id, first_seq,
           SUM(bytes) OVER (ORDER BY last_ts DESC, first_seq DESC ROWS UNBOUNDED PRECEDING) AS newer_bytes
    FROM log_chunks
) AS r
WHERE c.runner_id = r.runner_id AND c.first_seq = r.first_seq AND r.newer_bytes > $1
RETURNING c.bytes
"""


# --- writing (inside the transaction that applies a batch) -------------------------------------------------


async def append_log_lines(conn: Connection, runner_id: str, entries: Sequence[LogEntry]) -> None:
    """Store ``entries`` (in sequence order, all past what the runner's chunks hold) as chunks, in the caller's
    transaction."""
    if not entries:
        return
    first = entries[0]
    newest = await conn.fetchrow(
        "SELECT first_seq, bytes, job_id, step FROM log_chunks WHERE runner_id = $1"
        " ORDER BY first_seq DESC LIMIT 1 FOR UPDATE",
        runner_id,
    )
    after = None
    if newest is not None and newest[1] < APPEND_BELOW_BYTES and (newest[2], newest[3]) == (first.job_id, first.step):
        row = await conn.fetchrow(
            f"SELECT {SELECT_CHUNK} FROM log_chunks WHERE runner_id = $1 AND first_seq = $2", runner_id, newest[0]
        )
        after = Chunk(*row) if row is not None else None
    extended, new = chunked(runs(entries), after)
    if extended is not None:
        await conn.execute(_EXTEND, *extended.row(runner_id)[2:], runner_id, extended.first_seq)
    if new:
        await conn.executemany(_INSERT, [chunk.row(runner_id) for chunk in new])


# --- reading -------------------------------------------------------------------------------------------------


async def _chunks(conn: Connection, sql: str, args: Sequence[Any]) -> AsyncIterator[Chunk]:
    async for row in conn.cursor(numbered(sql), *args, prefetch=CURSOR_PREFETCH):
        yield Chunk(*row)


async def _walk(
    chunks: AsyncIterator[Chunk], where: LogFilter, limit: int, oldest_first: bool, after_seq: int = 0
) -> list[LogEntry]:
    """:func:`coordinator.store.chunks.take` over chunks as they arrive, stopping once it has ``limit``."""
    pages: list[list[LogEntry]] = []
    wanted = limit
    async for chunk in chunks:
        found = take([chunk], where, wanted, oldest_first, after_seq)
        if found:
            pages.append(found)
            wanted -= len(found)
            if wanted <= 0:
                break
    if not oldest_first:
        pages.reverse()
    return [entry for page in pages for entry in page]


class PostgresLogStore:
    """The log queries on a :class:`~coordinator.store.postgres.database.PostgresDatabase` (entries are written
    by :func:`append_log_lines`)."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    async def page(self, runner_id: str, where: LogFilter, limit: int, oldest_first: bool) -> LogPage:
        """The first ``limit`` matching entries (``oldest_first``) or the last ``limit``; in order either way."""
        candidate, params = where.candidate_sql()
        whole, whole_params = where.whole_sql()
        order = "ASC" if oldest_first else "DESC"
        scope = f"FROM log_chunks WHERE runner_id = ?{candidate}"
        async with self._db.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            total = int(
                await conn.fetchval(
                    numbered(f"SELECT COALESCE(SUM(line_count), 0) {scope} AND {whole}"),
                    runner_id,
                    *params,
                    *whole_params,
                )
            )
            if where.filters_lines:
                partial = _chunks(
                    conn, f"SELECT {SELECT_CHUNK} {scope} AND NOT ({whole})", [runner_id, *params, *whole_params]
                )
                async for chunk in partial:
                    total += sum(1 for entry in chunk.entries() if where.matches(entry))
            rows = _chunks(conn, f"SELECT {SELECT_CHUNK} {scope} ORDER BY first_seq {order}", [runner_id, *params])
            entries = await _walk(rows, where, limit, oldest_first)
        return LogPage(entries, total)

    async def after(self, runner_id: str, where: LogFilter, seq: int, limit: int = PAGE) -> list[LogEntry]:
        """Matching entries past sequence ``seq``, oldest first."""
        candidate, params = where.candidate_sql()
        sql = f"SELECT {SELECT_CHUNK} FROM log_chunks WHERE runner_id = ? AND last_seq > ?{candidate} ORDER BY last_seq"
        async with self._db.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await _walk(_chunks(conn, sql, [runner_id, seq, *params]), where, limit, True, after_seq=seq)

    async def last_seq(self, runner_id: str) -> int:
        async with self._db.connection() as conn:
            found = await conn.fetchval("SELECT MAX(last_seq) FROM log_chunks WHERE runner_id = $1", runner_id)
        return int(found or 0)

    async def enforce(self, max_per_job: int | None, max_total: int | None, jobs: Iterable[str] | None) -> Dropped:
        """Delete whole chunks, oldest first, until each job in ``jobs`` (``None``: every job) keeps at most
        ``max_per_job`` bytes and all logs together at most ``max_total``."""
        dropped = Dropped()
        async with self._db.transaction() as conn:
            if max_per_job is not None:
                if jobs is None:
                    over = await conn.fetch(
                        "SELECT job_id FROM log_chunks WHERE job_id IS NOT NULL GROUP BY job_id HAVING SUM(bytes) > $1",
                        max_per_job,
                    )
                    checked = sorted(str(row[0]) for row in over)
                else:
                    checked = sorted(set(jobs))
                _count(dropped, await conn.fetch(_PER_JOB, max_per_job, checked))
            if max_total is not None:
                _count(dropped, await conn.fetch(_TOTAL, max_total))
        return dropped


def _count(dropped: Dropped, gone: Sequence[Any]) -> None:
    dropped.chunks += len(gone)
    dropped.bytes += sum(int(row[0]) for row in gone)
