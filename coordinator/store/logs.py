"""Log entry queries, on the same SQLite database the store writes ``log_entries`` to.

Entries are ordered by the runner's outbox sequence (``seq``): the order the agent recorded them in, which is
their chronological order. Time filters use the timestamp the agent gave each entry.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.store.schema import LEVELS
from shared.models import AgentEvent, LogEvent
from shared.sqlite import Database
from shared.timeutil import from_epoch, isoformat

LEVEL_NAMES: dict[int, str] = {number: name for name, number in LEVELS.items()}
PAGE = 1000
"""Entries read at a time when a follower catches up."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    seq: int
    ts: float
    level: int
    message: str
    job_id: str | None
    step: str | None
    stream: str
    attempt: int | None

    @classmethod
    def from_event(cls, event: LogEvent) -> LogEntry:
        return cls(
            event.seq,
            event.at.timestamp(),
            LEVELS[event.level],
            event.message,
            event.job_id,
            event.step,
            event.stream,
            event.attempt,
        )

    def to_wire(self) -> dict[str, Any]:
        """The entry as the API shows it (the spec's shape, plus ``seq``)."""
        return {
            "seq": self.seq,
            "timestamp": isoformat(from_epoch(self.ts)),
            "level": LEVEL_NAMES.get(self.level, "info"),
            "message": self.message,
            "context": {"job_id": self.job_id, "step": self.step, "stream": self.stream, "attempt": self.attempt},
        }


def log_entries(events: Sequence[AgentEvent]) -> list[LogEntry]:
    return [LogEntry.from_event(event) for event in events if isinstance(event, LogEvent)]


@dataclass(frozen=True)
class LogFilter:
    """Which entries a query or a follower wants. ``since`` is inclusive, ``until`` exclusive."""

    since: float | None = None
    until: float | None = None
    min_level: int = 0
    job_id: str | None = None
    step: str | None = None

    def sql(self) -> tuple[str, list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            where.append("ts >= ?")
            params.append(self.since)
        if self.until is not None:
            where.append("ts < ?")
            params.append(self.until)
        if self.min_level:
            where.append("level >= ?")
            params.append(self.min_level)
        if self.job_id is not None:
            where.append("job_id = ?")
            params.append(self.job_id)
        if self.step is not None:
            where.append("step = ?")
            params.append(self.step)
        return "".join(f" AND {condition}" for condition in where), params

    def matches(self, entry: LogEntry) -> bool:
        return (
            (self.since is None or entry.ts >= self.since)
            and (self.until is None or entry.ts < self.until)
            and entry.level >= self.min_level
            and (self.job_id is None or entry.job_id == self.job_id)
            and (self.step is None or entry.step == self.step)
        )


@dataclass
class LogPage:
    entries: list[LogEntry]
    total_count: int
    """Entries matching the filter, returned or not."""

    @property
    def has_more(self) -> bool:
        return self.total_count > len(self.entries)


_COLUMNS = "seq, ts, level, message, job_id, step, stream, attempt"


def _entry(row: sqlite3.Row) -> LogEntry:
    return LogEntry(*row)


class LogStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    def of(cls, store: object) -> LogStore:
        """The log queries of a store that keeps its entries in SQLite (``SqliteStore``)."""
        db = getattr(store, "db", None)
        if not isinstance(db, Database):
            raise TypeError(f"{type(store).__name__} does not keep log entries in SQLite")
        return cls(db)

    async def page(self, runner_id: str, where: LogFilter, limit: int, oldest_first: bool) -> LogPage:
        """The first ``limit`` matching entries (``oldest_first``) or the last ``limit``; in order either way."""
        clause, params = where.sql()
        order = "ASC" if oldest_first else "DESC"

        def op(conn: sqlite3.Connection) -> LogPage:
            count = f"SELECT COUNT(*) FROM log_entries WHERE runner_id = ?{clause}"
            total = int(conn.execute(count, [runner_id, *params]).fetchone()[0])
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM log_entries WHERE runner_id = ?{clause} ORDER BY seq {order} LIMIT ?",
                [runner_id, *params, limit],
            ).fetchall()
            entries = [_entry(row) for row in rows]
            if not oldest_first:
                entries.reverse()
            return LogPage(entries, total)

        return await self._db.read(op)

    async def after(self, runner_id: str, where: LogFilter, seq: int, limit: int = PAGE) -> list[LogEntry]:
        """Matching entries past sequence ``seq``, oldest first."""
        clause, params = where.sql()

        def op(conn: sqlite3.Connection) -> list[LogEntry]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM log_entries WHERE runner_id = ? AND seq > ?{clause} ORDER BY seq LIMIT ?",
                [runner_id, seq, *params, limit],
            ).fetchall()
            return [_entry(row) for row in rows]

        return await self._db.read(op)

    async def last_seq(self, runner_id: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT MAX(seq) FROM log_entries WHERE runner_id = ?", (runner_id,)).fetchone()
            return int(row[0] or 0)

        return await self._db.read(op)
