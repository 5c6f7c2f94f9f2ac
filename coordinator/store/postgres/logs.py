"""Job logs in PostgreSQL: the write side, called inside the transaction that applies an agent's batch.

One row per entry in ``log_entries`` (the layout of schema migration 2), keyed by the runner's outbox sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.store.logs import LogEntry
from coordinator.store.postgres.database import Connection


async def append_log_lines(conn: Connection, runner_id: str, entries: Sequence[LogEntry]) -> None:
    """Store ``entries`` (in sequence order, past the runner's high-water mark) in the caller's transaction."""
    if entries:
        await conn.executemany(
            "INSERT INTO log_entries (runner_id, seq, ts, level, message, job_id, step, stream, attempt)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [(runner_id, e.seq, e.ts, e.level, e.message, e.job_id, e.step, e.stream, e.attempt) for e in entries],
        )
