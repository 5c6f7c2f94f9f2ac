"""Reading what the coordinator stored of a log, straight from its chunks (for assertions on every entry)."""

from __future__ import annotations

import sqlite3

from coordinator.store.chunks import SELECT_CHUNK, Chunk, LogEntry
from tests.conftest import CoordinatorHandle


async def stored_entries(
    coordinator: CoordinatorHandle, *, job_id: str | None = None, runner_id: str | None = None, no_job: bool = False
) -> list[LogEntry]:
    """The stored entries of one job, or of one runner (``no_job``: only those about no job), in seq order."""
    where, params = [], []
    if job_id is not None:
        where.append("job_id = ?")
        params.append(job_id)
    if runner_id is not None:
        where.append("runner_id = ?")
        params.append(runner_id)
    if no_job:
        where.append("job_id IS NULL")
    clause = f"WHERE {' AND '.join(where)}" if where else ""

    def op(conn: sqlite3.Connection) -> list[LogEntry]:
        rows = conn.execute(f"SELECT {SELECT_CHUNK} FROM log_chunks {clause} ORDER BY runner_id, first_seq", params)
        return [entry for row in rows for entry in Chunk(*row).entries()]

    return await coordinator.store.db.read(op)
