"""Job logs stored as chunks: the row layout every store engine keeps, and the one codec for chunk bodies.

A runner's log is a sequence of entries numbered by the agent's outbox sequence (``seq``). The store keeps
them in **chunks**: many consecutive entries of one runner, one job and one step per row. Each row carries
index columns a query uses to skip whole chunks; the entries themselves are in the row's ``body`` and are
filtered after decoding. Nothing in this module knows a database engine: the SQLite store
(``coordinator.store.logs``) and any other engine share the codec, the chunking rule, the filter's
predicates (as portable SQL with ``?`` placeholders and as Python) and the paging walk.

Table ``log_chunks`` (schema migration 7)::

    runner_id  TEXT    NOT NULL  REFERENCES runners(id) ON DELETE CASCADE
    first_seq  INTEGER NOT NULL  -- seq of the chunk's first entry
    last_seq   INTEGER NOT NULL  -- seq of its last entry
    job_id     TEXT              -- the job of every entry in the chunk (NULL: entries about no job)
    step       TEXT              -- the step of every entry in the chunk (NULL: no step)
    first_ts   REAL    NOT NULL  -- the earliest entry timestamp (seconds since the epoch)
    last_ts    REAL    NOT NULL  -- the latest entry timestamp
    min_level  INTEGER NOT NULL  -- the lowest level of an entry (10 debug, 20 info, 30 warn, 40 error)
    max_level  INTEGER NOT NULL  -- the highest
    line_count INTEGER NOT NULL  -- entries in the body
    bytes      INTEGER NOT NULL  -- size of the body in UTF-8 bytes (what retention counts)
    body       TEXT    NOT NULL  -- the entries, encoded as below
    PRIMARY KEY (runner_id, first_seq)
    INDEX log_chunks_last ON (runner_id, last_seq)
    INDEX log_chunks_job  ON (job_id, first_seq)
    INDEX log_chunks_age  ON (last_ts, bytes)        -- retention: the total, and the oldest chunks first

Invariants: a runner's chunks cover disjoint sequence ranges (``first_seq <= last_seq < next first_seq``), so
ordering chunks by ``first_seq`` orders their entries too; every entry of a chunk has the chunk's ``job_id``
and ``step``; a chunk holds at most :data:`CHUNK_MAX_LINES` entries and about :data:`CHUNK_MAX_BYTES`.

**Body encoding** (version 1): a JSON array (UTF-8 text, no whitespace) with one array per entry, in sequence
order: ``[seq, ts, level, stream, attempt, message]``, e.g.
``[[17,1700000017.25,20,"stdout",1,"hello"],[18,1700000017.5,30,"stderr",1,"oops"]]``: ``seq`` an integer,
``ts`` seconds since the epoch (a JSON number), ``level`` the integer level, ``stream`` ``"stdout"``,
``"stderr"`` or ``"system"``, ``attempt`` an integer or ``null``, ``message`` a string. Any JSON parser
reads it; the store never looks inside a body with SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, Protocol

from shared.timeutil import from_epoch, isoformat

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
"""Log levels as stored (an integer, so ``level >= ?`` filters by minimum level)."""
LEVEL_NAMES: dict[int, str] = {number: name for name, number in LEVELS.items()}

CHUNK_MAX_LINES = 1024
"""Most entries in one chunk: a page of the newest entries decodes one or two chunks, not a whole log."""
CHUNK_MAX_BYTES = 128 * 1024
"""A chunk stops growing once its body passes this size."""
APPEND_BELOW_BYTES = 16 * 1024
"""A small batch is appended to the runner's newest chunk while that chunk's body is smaller than this (a
slow step's lines then share chunks instead of taking a row each, and an append rewrites little)."""


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

    def to_wire(self) -> dict[str, Any]:
        """The entry as the API shows it (the spec's shape, plus ``seq``)."""
        return {
            "seq": self.seq,
            "timestamp": isoformat(from_epoch(self.ts)),
            "level": LEVEL_NAMES.get(self.level, "info"),
            "message": self.message,
            "context": {"job_id": self.job_id, "step": self.step, "stream": self.stream, "attempt": self.attempt},
        }


# --- the codec ---------------------------------------------------------------------------------------------

Row = list[Any]
"""One entry as a chunk body holds it: ``[seq, ts, level, stream, attempt, message]``."""

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
_ts, _level, _message = itemgetter(1), itemgetter(2), itemgetter(5)


def encode(rows: Sequence[Row]) -> str:
    """The body of a chunk holding ``rows`` (in sequence order)."""
    return _dumps(rows)


def decode(body: str, job_id: str | None, step: str | None) -> list[LogEntry]:
    """The entries of a chunk, from its body and its ``job_id`` and ``step`` columns."""
    return [
        LogEntry(seq, ts, level, message, job_id, step, stream, attempt)
        for seq, ts, level, stream, attempt, message in json.loads(body)
    ]


def row_of(entry: LogEntry) -> Row:
    return [entry.seq, entry.ts, entry.level, entry.stream, entry.attempt, entry.message]


class EpochSeconds:
    """``datetime.timestamp()`` for the many entries of a batch: the start of each hour is converted once (an
    aware datetime's own conversion asks its time zone for the offset every time, several times the cost)."""

    def __init__(self) -> None:
        self._hours: dict[tuple[int, int, int, int, int], float] = {}

    def __call__(self, at: datetime) -> float:
        key = (id(at.tzinfo), at.year, at.month, at.day, at.hour)
        base = self._hours.get(key)
        if base is None:
            base = self._hours[key] = at.replace(minute=0, second=0, microsecond=0).timestamp()
        return base + at.minute * 60 + at.second + at.microsecond / 1e6


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


@dataclass(frozen=True, slots=True)
class Chunk:
    """One row of ``log_chunks``, without its runner."""

    first_seq: int
    last_seq: int
    job_id: str | None
    step: str | None
    first_ts: float
    last_ts: float
    min_level: int
    max_level: int
    line_count: int
    bytes: int
    body: str

    @classmethod
    def of(cls, job_id: str | None, step: str | None, rows: Sequence[Row]) -> Chunk:
        """The chunk of consecutive entries of one job and one step (``rows``, in sequence order)."""
        body = encode(rows)
        times = list(map(_ts, rows))
        levels = list(map(_level, rows))
        return cls(
            rows[0][0],
            rows[-1][0],
            job_id,
            step,
            min(times),
            max(times),
            min(levels),
            max(levels),
            len(rows),
            utf8_size(body),
            body,
        )

    @classmethod
    def of_entries(cls, entries: Sequence[LogEntry]) -> Chunk:
        return cls.of(entries[0].job_id, entries[0].step, [row_of(e) for e in entries])

    def entries(self) -> list[LogEntry]:
        return decode(self.body, self.job_id, self.step)

    def rows(self) -> list[Row]:
        rows: list[Row] = json.loads(self.body)
        return rows

    def row(self, runner_id: str) -> tuple[Any, ...]:
        """The values for ``INSERT INTO log_chunks (CHUNK_COLUMNS)``."""
        return (runner_id, *(getattr(self, name) for name in CHUNK_FIELDS))


CHUNK_FIELDS = (
    "first_seq",
    "last_seq",
    "job_id",
    "step",
    "first_ts",
    "last_ts",
    "min_level",
    "max_level",
    "line_count",
    "bytes",
    "body",
)
CHUNK_COLUMNS = "runner_id, " + ", ".join(CHUNK_FIELDS)
"""The columns of ``log_chunks`` in the order :meth:`Chunk.row` gives them."""
SELECT_CHUNK = ", ".join(CHUNK_FIELDS)
"""The columns to select for :func:`Chunk` ``(*row)``."""


@dataclass(slots=True)
class Run:
    """Consecutive entries of one job and one step, as rows: what a batch is cut into before chunking."""

    job_id: str | None
    step: str | None
    rows: list[Row]


def runs(entries: Iterable[LogEntry]) -> list[Run]:
    """Entries (in sequence order) cut where the job or the step changes."""
    found: list[Run] = []
    for entry in entries:
        if not found or (found[-1].job_id, found[-1].step) != (entry.job_id, entry.step):
            found.append(Run(entry.job_id, entry.step, []))
        found[-1].rows.append(row_of(entry))
    return found


def chunked(batch: Sequence[Run], after: Chunk | None = None) -> tuple[Chunk | None, list[Chunk]]:
    """Chunks of the runs of a batch (in sequence order, all past ``after``): one run is one chunk, or several
    where it is full (:data:`CHUNK_MAX_LINES`, about :data:`CHUNK_MAX_BYTES`). The first run is appended to
    ``after`` (the runner's newest chunk) if it has the same job and step and that chunk is still small
    (:data:`APPEND_BELOW_BYTES`).

    Returns ``after`` grown (``None`` if nothing was added to it) and the new chunks."""
    pending = list(batch)
    extended: Chunk | None = None
    if (
        pending
        and after is not None
        and after.bytes < APPEND_BELOW_BYTES
        and after.line_count < CHUNK_MAX_LINES
        and (after.job_id, after.step) == (pending[0].job_id, pending[0].step)
    ):
        first = pending.pop(0)
        room = CHUNK_MAX_LINES - after.line_count
        extended = Chunk.of(after.job_id, after.step, after.rows() + first.rows[:room])
        if len(first.rows) > room:
            pending.insert(0, Run(first.job_id, first.step, first.rows[room:]))
    made: list[Chunk] = []
    for run in pending:
        rows = run.rows
        # Lines per chunk from the run's average message size, so a chunk's body is about CHUNK_MAX_BYTES.
        average = sum(map(len, map(_message, rows))) // len(rows) + ROW_OVERHEAD
        per_chunk = max(1, min(CHUNK_MAX_LINES, CHUNK_MAX_BYTES // average))
        made.extend(Chunk.of(run.job_id, run.step, rows[i : i + per_chunk]) for i in range(0, len(rows), per_chunk))
    return extended, made


ROW_OVERHEAD = 40
"""About the encoded size of a row besides its message (seq, timestamp, level, stream, attempt, brackets)."""


# --- filters -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    """Which entries a query or a follower wants. ``since`` is inclusive, ``until`` exclusive.

    A chunk is a *candidate* when some entry of it may match (judged from its index columns alone), and
    *whole* when every entry of it matches: a whole chunk is counted from ``line_count`` without decoding."""

    since: float | None = None
    until: float | None = None
    min_level: int = 0
    job_id: str | None = None
    step: str | None = None

    def candidate_sql(self) -> tuple[str, list[Any]]:
        """``AND …`` conditions (portable SQL, ``?`` placeholders) on ``log_chunks`` for candidate chunks."""
        where: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            where.append("last_ts >= ?")
            params.append(self.since)
        if self.until is not None:
            where.append("first_ts < ?")
            params.append(self.until)
        if self.min_level:
            where.append("max_level >= ?")
            params.append(self.min_level)
        if self.job_id is not None:
            where.append("job_id = ?")
            params.append(self.job_id)
        if self.step is not None:
            where.append("step = ?")
            params.append(self.step)
        return "".join(f" AND {condition}" for condition in where), params

    def whole_sql(self) -> tuple[str, list[Any]]:
        """A portable SQL boolean expression (``?`` placeholders): this candidate chunk matches entirely."""
        where: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            where.append("first_ts >= ?")
            params.append(self.since)
        if self.until is not None:
            where.append("last_ts < ?")
            params.append(self.until)
        if self.min_level:
            where.append("min_level >= ?")
            params.append(self.min_level)
        return (" AND ".join(where) or "1 = 1"), params

    @property
    def filters_lines(self) -> bool:
        """Whether a candidate chunk can hold entries that do not match (so it must be decoded to count)."""
        return self.since is not None or self.until is not None or self.min_level > 0

    def matches(self, entry: LogEntry) -> bool:
        return (
            (self.since is None or entry.ts >= self.since)
            and (self.until is None or entry.ts < self.until)
            and entry.level >= self.min_level
            and (self.job_id is None or entry.job_id == self.job_id)
            and (self.step is None or entry.step == self.step)
        )


# --- paging ------------------------------------------------------------------------------------------------


def take(
    chunks: Iterable[Chunk], where: LogFilter, limit: int, oldest_first: bool, after_seq: int = 0
) -> list[LogEntry]:
    """The first ``limit`` matching entries past ``after_seq`` of candidate chunks given in order (ascending
    ``first_seq`` if ``oldest_first``, else descending), returned in sequence order either way. The walk stops
    as soon as it has ``limit``, so a page may begin or end in the middle of a chunk."""
    found: list[LogEntry] = []
    for chunk in chunks:
        entries = chunk.entries()
        ordered: Iterator[LogEntry] = iter(entries) if oldest_first else reversed(entries)
        for entry in ordered:
            if entry.seq > after_seq and where.matches(entry):
                found.append(entry)
                if len(found) == limit:
                    return found if oldest_first else found[::-1]
    return found if oldest_first else found[::-1]


def count_partial(chunks: Iterable[Chunk], where: LogFilter) -> int:
    """Matching entries in candidate chunks that are not whole (decoded one by one)."""
    return sum(1 for chunk in chunks for entry in chunk.entries() if where.matches(entry))


@dataclass
class LogPage:
    entries: list[LogEntry]
    total_count: int
    """Entries matching the filter, returned or not."""

    @property
    def has_more(self) -> bool:
        return self.total_count > len(self.entries)


@dataclass
class Dropped:
    """What one retention pass deleted."""

    chunks: int = 0
    bytes: int = 0


# --- what an engine offers ----------------------------------------------------------------------------------


class LogQueries(Protocol):
    """The log queries a store engine answers (``coordinator.store.logs.LogStore`` for SQLite). An engine's
    store exposes them as its ``logs`` attribute; writing happens inside the engine's ``apply_events``."""

    async def page(self, runner_id: str, where: LogFilter, limit: int, oldest_first: bool) -> LogPage:
        """The first ``limit`` matching entries (``oldest_first``) or the last ``limit``, in order, with the
        count of all matching entries (``LogPage``)."""
        ...

    async def after(self, runner_id: str, where: LogFilter, seq: int, limit: int) -> list[LogEntry]:
        """Matching entries past sequence ``seq``, oldest first, at most ``limit``."""
        ...

    async def last_seq(self, runner_id: str) -> int: ...

    async def enforce(self, max_per_job: int | None, max_total: int | None, jobs: Iterable[str] | None) -> Dropped:
        """Delete whole chunks, oldest first, until the limits hold (``jobs``: only these; ``None``: all)."""
        ...
