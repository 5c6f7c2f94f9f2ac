"""Job logs in SQLite: chunks written as agents' batches are applied, queries paging within and across chunks.

The row layout, the body codec, the chunking rule and the filter predicates are ``coordinator.store.chunks``
(shared by every engine); this module is the SQLite side. Entries are ordered by the runner's outbox sequence
(``seq``): the order the agent recorded them in, which is their chronological order. Time filters use the
timestamp the agent gave each entry.

Retention (``logs.max_bytes_per_job``, ``logs.max_total_bytes``) drops whole chunks, oldest first
(:meth:`LogStore.enforce`). A reader never sees a hole: a page simply begins at the oldest entry kept, and a
follower resuming from a ``Last-Event-ID`` older than that resumes at the oldest entry kept.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence

from coordinator.store.chunks import (
    APPEND_BELOW_BYTES,
    CHUNK_COLUMNS,
    CHUNK_FIELDS,
    LEVELS,
    SELECT_CHUNK,
    Chunk,
    Dropped,
    EpochSeconds,
    LogEntry,
    LogFilter,
    LogPage,
    Run,
    chunked,
    count_partial,
    runs,
    take,
)
from shared.models import AgentEvent, LogEvent
from shared.sqlite import Database

__all__ = [
    "PAGE",
    "LogEntry",
    "LogFilter",
    "LogPage",
    "LogStore",
    "entry_of",
    "log_entries",
]

PAGE = 1000
"""Entries read at a time when a follower catches up."""
MIGRATION_BATCH = 8 * 1024
"""Old rows converted at a time by migration 7."""


def entry_of(event: LogEvent, epoch: EpochSeconds | None = None) -> LogEntry:
    return LogEntry(
        event.seq,
        epoch(event.at) if epoch else event.at.timestamp(),
        LEVELS[event.level],
        event.message,
        event.job_id,
        event.step,
        event.stream,
        event.attempt,
    )


def log_entries(events: Sequence[AgentEvent]) -> list[LogEntry]:
    epoch = EpochSeconds()
    return [entry_of(event, epoch) for event in events if isinstance(event, LogEvent)]


# --- writing (inside the transaction that applies a batch) -------------------------------------------------


def write(conn: sqlite3.Connection, runner_id: str, batch: list[Run]) -> None:
    """Store the runs of a batch (in sequence order, all past what the runner's chunks hold) as chunks."""
    if not batch:
        return
    newest = conn.execute(
        "SELECT first_seq, bytes, job_id, step FROM log_chunks WHERE runner_id = ? ORDER BY first_seq DESC LIMIT 1",
        (runner_id,),
    ).fetchone()
    after = None
    first = batch[0]
    if newest is not None and newest[1] < APPEND_BELOW_BYTES and (newest[2], newest[3]) == (first.job_id, first.step):
        row = conn.execute(
            f"SELECT {SELECT_CHUNK} FROM log_chunks WHERE runner_id = ? AND first_seq = ?", (runner_id, newest[0])
        ).fetchone()
        after = Chunk(*row)
    extended, new = chunked(batch, after)
    if extended is not None:
        sets = ", ".join(f"{name} = ?" for name in CHUNK_FIELDS[1:])
        conn.execute(
            f"UPDATE log_chunks SET {sets} WHERE runner_id = ? AND first_seq = ?",
            (*extended.row(runner_id)[2:], runner_id, extended.first_seq),
        )
    if new:
        marks = ", ".join("?" for _ in CHUNK_COLUMNS.split(", "))
        conn.executemany(f"INSERT INTO log_chunks ({CHUNK_COLUMNS}) VALUES ({marks})", [c.row(runner_id) for c in new])


def _drop_oldest(conn: sqlite3.Connection, rows: Sequence[sqlite3.Row], excess: int, dropped: Dropped) -> int:
    """Delete chunks from the front of ``rows`` (runner_id, first_seq, bytes; oldest first) until at least
    ``excess`` bytes are gone; returns how many bytes were."""
    doomed: list[tuple[str, int]] = []
    freed = 0
    for runner_id, first_seq, size in rows:
        if freed >= excess:
            break
        doomed.append((runner_id, first_seq))
        freed += int(size)
    if doomed:
        conn.executemany("DELETE FROM log_chunks WHERE runner_id = ? AND first_seq = ?", doomed)
        dropped.chunks += len(doomed)
        dropped.bytes += freed
    return freed


# --- schema migration 7: one row per entry → chunks -----------------------------------------------------------

CHUNK_SCHEMA = """
    CREATE TABLE log_chunks (
        runner_id TEXT NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        job_id TEXT,
        step TEXT,
        first_ts REAL NOT NULL,
        last_ts REAL NOT NULL,
        min_level INTEGER NOT NULL,
        max_level INTEGER NOT NULL,
        line_count INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (runner_id, first_seq)
    );
    CREATE INDEX log_chunks_last ON log_chunks(runner_id, last_seq);
    CREATE INDEX log_chunks_job ON log_chunks(job_id, first_seq);
    CREATE INDEX log_chunks_age ON log_chunks(last_ts, bytes)
"""
"""The table (see ``coordinator.store.chunks`` for what each column means)."""


def migrate_to_chunks(conn: sqlite3.Connection) -> None:
    """Create ``log_chunks``, move every ``log_entries`` row into it (through the same chunking as new
    entries), and drop the old table."""
    for statement in CHUNK_SCHEMA.split(";\n"):
        conn.execute(statement)
    runners = [row[0] for row in conn.execute("SELECT DISTINCT runner_id FROM log_entries")]
    for runner_id in runners:
        last = 0
        while True:
            rows = conn.execute(
                "SELECT seq, ts, level, message, job_id, step, stream, attempt FROM log_entries"
                " WHERE runner_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (runner_id, last, MIGRATION_BATCH),
            ).fetchall()
            if not rows:
                break
            write(conn, runner_id, runs(LogEntry(*row) for row in rows))
            last = int(rows[-1][0])
    conn.execute("DROP TABLE log_entries")


# --- reading -------------------------------------------------------------------------------------------------


def _chunks(cursor: Iterable[sqlite3.Row]) -> Iterator[Chunk]:
    return (Chunk(*row) for row in cursor)


class LogStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def page(self, runner_id: str, where: LogFilter, limit: int, oldest_first: bool) -> LogPage:
        """The first ``limit`` matching entries (``oldest_first``) or the last ``limit``; in order either way."""
        candidate, params = where.candidate_sql()
        whole, whole_params = where.whole_sql()
        order = "ASC" if oldest_first else "DESC"
        scope = f"FROM log_chunks WHERE runner_id = ?{candidate}"

        def op(conn: sqlite3.Connection) -> LogPage:
            total = int(
                conn.execute(
                    f"SELECT COALESCE(SUM(line_count), 0) {scope} AND {whole}", [runner_id, *params, *whole_params]
                ).fetchone()[0]
            )
            if where.filters_lines:
                partial = conn.execute(
                    f"SELECT {SELECT_CHUNK} {scope} AND NOT ({whole})", [runner_id, *params, *whole_params]
                )
                total += count_partial(_chunks(partial), where)
            rows = conn.execute(f"SELECT {SELECT_CHUNK} {scope} ORDER BY first_seq {order}", [runner_id, *params])
            return LogPage(take(_chunks(rows), where, limit, oldest_first), total)

        return await self._db.read(op)

    async def after(self, runner_id: str, where: LogFilter, seq: int, limit: int = PAGE) -> list[LogEntry]:
        """Matching entries past sequence ``seq``, oldest first."""
        candidate, params = where.candidate_sql()

        def op(conn: sqlite3.Connection) -> list[LogEntry]:
            rows = conn.execute(
                f"SELECT {SELECT_CHUNK} FROM log_chunks WHERE runner_id = ? AND last_seq > ?{candidate}"
                " ORDER BY last_seq",
                [runner_id, seq, *params],
            )
            return take(_chunks(rows), where, limit, oldest_first=True, after_seq=seq)

        return await self._db.read(op)

    async def enforce(self, max_per_job: int | None, max_total: int | None, jobs: Iterable[str] | None) -> Dropped:
        """Delete whole chunks, oldest first, until each job in ``jobs`` (``None``: every job) keeps at most
        ``max_per_job`` bytes and all logs together at most ``max_total``."""
        wanted = None if jobs is None else sorted(set(jobs))

        def op(conn: sqlite3.Connection) -> Dropped:
            dropped = Dropped()
            if max_per_job is not None:
                if wanted is None:
                    over = conn.execute(
                        "SELECT job_id FROM log_chunks WHERE job_id IS NOT NULL GROUP BY job_id HAVING SUM(bytes) > ?",
                        (max_per_job,),
                    ).fetchall()
                    candidates = [str(row[0]) for row in over]
                else:
                    candidates = wanted
                for job_id in candidates:
                    rows = conn.execute(
                        "SELECT runner_id, first_seq, bytes FROM log_chunks WHERE job_id = ? ORDER BY first_seq",
                        (job_id,),
                    ).fetchall()
                    _drop_oldest(conn, rows, sum(int(r[2]) for r in rows) - max_per_job, dropped)
            if max_total is not None:
                total = int(conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM log_chunks").fetchone()[0])
                while total > max_total:
                    rows = conn.execute(
                        "SELECT runner_id, first_seq, bytes FROM log_chunks ORDER BY last_ts, first_seq LIMIT 256"
                    ).fetchall()
                    if not rows:
                        break
                    total -= _drop_oldest(conn, rows, total - max_total, dropped)
            return dropped

        return await self._db.run(op)

    async def last_seq(self, runner_id: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT MAX(last_seq) FROM log_chunks WHERE runner_id = ?", (runner_id,)).fetchone()
            return int(row[0] or 0)

        return await self._db.read(op)
