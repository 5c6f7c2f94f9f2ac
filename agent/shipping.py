"""The outbox: everything the agent tells the coordinator about jobs, delivered exactly once and in order.

Events are written to the agent's SQLite before they are sent, each numbered by the outbox sequence. The
shipper sends whatever is pending as one batch, the coordinator applies what is past its high-water mark and
acknowledges the highest sequence it stored, and only then are those entries deleted. Resending after any
failure or restart is therefore always safe.

Log lines arrive already encoded (see ``agent/logsink.py``) and are buffered in memory only until the single
writer's next transaction. A job transition writes the buffered lines first, so a step's output always
precedes its ``finished`` event.

Batching, by size and by time, on both hops (the writer's transactions and the shipper's frames):

- **Size.** A frame carries up to ``BATCH_BYTES`` (1 MiB, like GitLab Runner's trace patches) or
  ``BATCH_LIMIT`` entries; the writer writes at once when ``WRITE_BYTES`` are buffered.
- **Time.** The first line after a quiet spell is written and sent at once. After that, a hop that is not
  full waits until ``BATCH_DELAY`` after its previous one, so lines arriving faster than that share a
  transaction and a frame (a step printing a line every millisecond costs about a hundred frames a second,
  not a thousand) while a follower still sees every line within about twice ``BATCH_DELAY`` plus the round trip.
  Whatever arrives while a write or a send is in flight goes into the next one.

The spool is bounded, on disk and in memory, and never makes a job wait:

- On disk (``spool_max_bytes``): when the unacknowledged entries pass the bound — the coordinator has been
  unreachable for a while — the oldest undelivered *log* entries are deleted (never job or step state
  events, never an entry that may have reached the coordinator: the batch in flight, or one whose send broke
  off after it left) down to 90 % of the bound, and one ``warn`` entry says how many were dropped. While that
  entry is still unsent, later drops update its count instead of adding more. Batches are at most a quarter
  of the bound, so what cannot be dropped stays a small part of the spool.
- In memory: a step's output waits for the writer between chunks (``room``) once ``HIGH_WATER`` bytes are
  buffered, so a step printing faster than the local disk takes it is slowed like a slow terminal would slow
  it (never by the coordinator: the spool absorbs that). Past ``memory_max_bytes`` — output from a reader
  that does not wait — the oldest buffered lines are dropped the same way.

The writer and the shipper each touch SQLite with one statement per batch, never one per row: with a step's
output keeping the event loop's thread busy, every per-row return to Python would wait for the GIL (the
convoy effect) and the writer would fall hopelessly behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agent.channel import Channel, ChannelDown
from agent.coordinator_client import CoordinatorUnreachable
from agent.identity import Identity
from agent.logsink import now
from agent.store import AgentStore
from shared import protocol
from shared.errors import ApiError, AuthenticationRequired, RunnerNotFound

log = structlog.get_logger(__name__)

BATCH_LIMIT = 10_000
"""Most entries in one batch (what the coordinator accepts in one)."""
BATCH_BYTES = 1024 * 1024
"""A batch stops growing past this size (well under the coordinator's body limit), whatever the line length."""
BATCH_DELAY = 0.01
"""Seconds a write or a send that is not full waits after the previous one, for more lines to join it."""
MAX_BACKOFF = 5.0
REFUSALS = 3
"""Tries before a single entry the coordinator keeps failing on with a server error is quarantined."""
DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MEMORY_MAX_BYTES = 16 * 1024 * 1024
HIGH_WATER = 1024 * 1024
"""Buffered bytes past which a step's output waits for the writer (``Outbox.room``)."""
WRITE_BYTES = HIGH_WATER // 2
"""Buffered bytes that make the writer write at once, without waiting out ``BATCH_DELAY``."""
_JOINED = "group_concat('{\"seq\":' || seq || ',' || substr(body, 2), ',')"
"""The rows of a batch as the ``events`` array's text (SQL)."""
SMALLEST_ENTRY = 96
"""Fewer bytes than any encoded entry has (a floor for the size a batch read expects of an entry)."""
SPOOL_LOW_WATER = 0.9
"""A drop frees the spool down to this fraction of its bound, so drops come in few, large steps."""


@dataclass(frozen=True)
class Batch:
    """Pending entries as the ``events`` array of a request body (without the brackets)."""

    count: int
    last_seq: int
    events: str

    def full(self, limit: int, most: int) -> bool:
        return self.count >= limit or len(self.events) >= most // 2


STATE_PREFIXES = ('{"kind":"step"', '{"kind":"job"')
"""How an encoded state event starts (``shared.protocol`` encodes them compactly, kind first)."""


class Outbox:
    def __init__(
        self,
        store: AgentStore,
        identity: Callable[[], Identity],
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        memory_max_bytes: int = DEFAULT_MEMORY_MAX_BYTES,
    ) -> None:
        self._store = store
        self._identity = identity
        self.spool_max_bytes = spool_max_bytes
        self.memory_max_bytes = memory_max_bytes
        self._lines: list[str] = []
        self._lines_bytes = 0
        self._lines_waiting = asyncio.Event()
        self._lines_full = asyncio.Event()
        self._last_write = 0.0
        self._room = asyncio.Event()
        self._room.set()
        self.pending = asyncio.Event()
        """Set whenever new entries are durable: the shipper's cue."""
        # Touched only inside database operations (one thread, one at a time), so they need no lock.
        self._spool_bytes: int | None = None  # size of the outbox table, counted once then kept up to date
        self._entry_size = 256  # the average size of the entries of the last batch read
        # Entries up to this sequence may be at the coordinator already (a batch in flight, or one whose send
        # failed after it left): they are never dropped, so the drop count stays exact.
        self._protected_upto = 0
        self._maybe_delivered_upto = 0
        self._notice: tuple[int, int, int] | None = None  # undelivered drop entry: (seq, entries, bytes)
        # Lines shed from memory, to be counted in the next drop entry (touched on the loop only).
        self._shed = (0, 0)
        self.dropped_entries = 0
        """Log entries dropped since start (spool or memory full): for tests and metrics."""
        self.peak_buffered_bytes = 0
        """The most log lines ever waiting in memory for the writer, in bytes: for tests and metrics."""

    # --- writing ---------------------------------------------------------------------------------------

    async def transition(self, job_id: str, status: str, attempt: int, *events: str) -> None:
        """Record a job's state and queue the events that report it (encoded by ``shared.protocol``), after any
        buffered entries, in one transaction (the job's state and its report are never out of step after a
        crash)."""
        await self._write(list(events), job_state=(job_id, status, attempt))

    async def emit(self, *events: str) -> None:
        await self._write(list(events))

    def emit_nowait(self, *events: str) -> None:
        """Queue events behind the buffered lines without waiting for the disk (step transitions): the writer
        stores them shortly, and the job's next transition stores them first in its own transaction."""
        self._lines.extend(events)
        self._lines_waiting.set()

    def line(self, body: str) -> None:
        """Queue an encoded log entry without waiting (called for every line a step prints)."""
        self._lines.append(body)
        self._lines_bytes += len(body)
        if self._lines_bytes >= WRITE_BYTES:
            self._lines_full.set()
        if self._lines_bytes > self.peak_buffered_bytes:
            self.peak_buffered_bytes = self._lines_bytes
            if self._lines_bytes > self.memory_max_bytes:
                self._shed_oldest()
        self._lines_waiting.set()

    async def room(self) -> None:
        """Wait while the writer is more than HIGH_WATER bytes behind (a step's output, between chunks)."""
        while self._lines_bytes > HIGH_WATER:
            self._room.clear()
            await self._room.wait()

    async def run_writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._lines_waiting.wait()
            # Lines arriving fast share one transaction: wait out the delay unless enough are buffered.
            wait = self._last_write + BATCH_DELAY - loop.time()
            if wait > 0 and not self._lines_full.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._lines_full.wait()
            self._lines_waiting.clear()
            self._last_write = loop.time()
            await self._write([])

    async def flush(self) -> None:
        await self._write([])

    def _shed_oldest(self) -> None:
        """The writer is far behind: drop the oldest buffered log lines, down to half the memory bound.
        State events (a step started or finished) are kept whatever the pressure."""
        count, size, index = 0, 0, 0
        kept: list[str] = []
        while self._lines_bytes > self.memory_max_bytes // 2 and index < len(self._lines):
            body = self._lines[index]
            index += 1
            if body.startswith(STATE_PREFIXES):
                kept.append(body)
                continue
            self._lines_bytes -= len(body)
            size += len(body)
            count += 1
        self._lines[:index] = kept
        self._shed = (self._shed[0] + count, self._shed[1] + size)
        self.dropped_entries += count
        log.warning("log writer fell behind; dropped buffered log lines", dropped=count)

    async def _write(self, bodies: list[str], job_state: tuple[str, str, int] | None = None) -> None:
        lines, self._lines, self._lines_bytes = self._lines, [], 0
        self._lines_full.clear()
        self._room.set()
        shed, self._shed = self._shed, (0, 0)
        rows = [*lines, *bodies]
        if not rows and not shed[0] and job_state is None:
            return
        runner_id = self._identity().runner_id

        # One statement for the whole batch, rows passed as one JSON array of strings: SQLite splits it without
        # the GIL, where executemany would take the GIL back for every row and crawl while a busy step's output
        # keeps the event loop's thread running (the convoy effect).
        packed = json.dumps(rows)

        def op(conn: sqlite3.Connection) -> None:
            if job_state is not None:
                job_id, status, attempt = job_state
                conn.execute(
                    "UPDATE jobs SET status = ?, attempt = ?, updated_at = ? WHERE job_id = ?",
                    (status, attempt, time.time(), job_id),
                )
            conn.execute(
                "INSERT INTO outbox (runner_id, body) SELECT ?, value FROM json_each(?) ORDER BY key",
                (runner_id, packed),
            )
            if shed[0]:
                self._record_drop(conn, runner_id, *shed)
            self._grew(conn, sum(map(len, rows)))

        await self._store.db.run(op)
        self.pending.set()

    # --- the spool bound (database thread) -----------------------------------------------------------------

    def _grew(self, conn: sqlite3.Connection, added: int) -> None:
        if self._spool_bytes is None:
            self._spool_bytes = int(conn.execute("SELECT COALESCE(SUM(length(body)), 0) FROM outbox").fetchone()[0])
        else:
            self._spool_bytes += added
        if self._spool_bytes > self.spool_max_bytes:
            self._drop_oldest(conn)

    def _drop_oldest(self, conn: sqlite3.Connection) -> None:
        assert self._spool_bytes is not None
        need = self._spool_bytes - int(self.spool_max_bytes * SPOOL_LOW_WATER)
        notice = self._notice[0] if self._notice else 0
        # Never state events, never the drop entry, never what may be delivered.
        droppable = "FROM outbox WHERE seq > ? AND seq != ? AND json_extract(body, '$.kind') = 'log'"
        count = freed = 0
        last, runner_id = self._protected_upto, ""
        while freed < need:  # a thousand rows per statement: no per-row trip back to Python
            n, upto, size, owner = conn.execute(
                f"SELECT COUNT(*), MAX(seq), SUM(size), MAX(runner_id) FROM ("
                f"  SELECT seq, runner_id, length(body) AS size {droppable} ORDER BY seq LIMIT 1000)",
                (last, notice),
            ).fetchone()
            if not n:
                break  # nothing more to drop: what is left is state, the notice, or may be delivered
            count, freed, last, runner_id = count + int(n), freed + int(size), int(upto), str(owner)
        if not count:
            return
        conn.execute(f"DELETE {droppable} AND seq <= ?", (self._protected_upto, notice, last))
        self._spool_bytes -= freed
        self.dropped_entries += count
        self._record_drop(conn, runner_id, count, freed)

    def _record_drop(self, conn: sqlite3.Connection, runner_id: str, count: int, size: int) -> None:
        """Say what was dropped: update the drop entry still waiting to be sent, else write a new one."""
        if self._notice is not None and self._notice[0] > self._protected_upto:
            seq, count, size = self._notice[0], self._notice[1] + count, self._notice[2] + size
            body = self._notice_body(count, size)
            old = conn.execute("SELECT length(body) FROM outbox WHERE seq = ?", (seq,)).fetchone()
            if old is not None:
                conn.execute("UPDATE outbox SET body = ? WHERE seq = ?", (body, seq))
                self._notice = (seq, count, size)
                self._spool_bytes = (self._spool_bytes or 0) + len(body) - int(old[0])
                return
        body = self._notice_body(count, size)
        cursor = conn.execute("INSERT INTO outbox (runner_id, body) VALUES (?, ?)", (runner_id, body))
        assert cursor.lastrowid is not None
        self._notice = (cursor.lastrowid, count, size)
        self._spool_bytes = (self._spool_bytes or 0) + len(body)
        log.warning("log spool full; dropped undelivered log entries", dropped=count, dropped_bytes=size)

    def _notice_body(self, count: int, size: int) -> str:
        message = (
            f"Dropped {count} log entries ({size} bytes) that had not reached the coordinator:"
            f" the agent's log spool is limited to {self.spool_max_bytes} bytes"
        )
        return protocol.log_event(now(), "warn", message)

    # --- reading and acknowledging (the shipper) ------------------------------------------------------------

    @property
    def batch_bytes(self) -> int:
        """About the most bytes in one batch."""
        return min(BATCH_BYTES, self.spool_max_bytes // 4)

    async def pending_batch(self, runner_id: str, after: int = 0, limit: int = BATCH_LIMIT) -> Batch | None:
        """The oldest unacknowledged entries past sequence ``after``, at most BATCH_LIMIT of them and about
        BATCH_BYTES (less for a small spool: what is in flight cannot be dropped, so it must stay a small part
        of the spool)."""
        most = self.batch_bytes

        def op(conn: sqlite3.Connection) -> Batch | None:
            # Bodies are stored without their sequence number: splice it in front, and join the batch in SQLite.
            # As many rows as the recent entries' size says fill three quarters of the bound: that read costs a third
            # of one that keeps a running total; only if these entries are longer is the batch cut exactly.
            estimate = max(1, min(limit, most * 3 // 4 // max(self._entry_size, SMALLEST_ENTRY)))
            count, last, size, events = conn.execute(
                f"SELECT COUNT(*), MAX(seq), SUM(length(body)), {_JOINED} FROM ("
                "  SELECT seq, body FROM outbox WHERE runner_id = ? AND seq > ? ORDER BY seq LIMIT ?)",
                (runner_id, after, estimate),
            ).fetchone()
            if count:
                self._entry_size = int(size) // int(count)
            if count and int(size) > most and count > 1:
                # The LIMIT is applied before the running total: a window over the whole spool would cost O(spool).
                count, last, events = conn.execute(
                    f"SELECT COUNT(*), MAX(seq), {_JOINED} FROM ("
                    "  SELECT seq, body, SUM(length(body)) OVER (ORDER BY seq) - length(body) AS before FROM ("
                    "    SELECT seq, body FROM outbox WHERE runner_id = ? AND seq > ? ORDER BY seq LIMIT ?"
                    "  ) ORDER BY seq"
                    ") WHERE before < ?",
                    (runner_id, after, count, most),
                ).fetchone()
            if count:
                self._protected_upto = max(self._maybe_delivered_upto, int(last))
                return Batch(int(count), int(last), str(events))
            if self._spool_bytes is not None:
                # Nothing pending: recount, so the running total cannot drift (another runner's rows, say).
                self._spool_bytes = int(conn.execute("SELECT COALESCE(SUM(length(body)), 0) FROM outbox").fetchone()[0])
            return None

        return await self._store.db.run(op)

    def unsent(self, batch: Batch, maybe_delivered: bool) -> None:
        """A batch's send failed; unless it may have reached the coordinator, its entries can be dropped again."""
        if maybe_delivered:
            self._maybe_delivered_upto = max(self._maybe_delivered_upto, batch.last_seq)
        self._protected_upto = self._maybe_delivered_upto

    async def quarantine(self, seq: int, code: str, reason: str) -> None:
        """Move one refused entry out of the outbox into the ``quarantine`` table, so what follows it can flow."""

        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT length(body) FROM outbox WHERE seq = ?", (seq,)).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO quarantine (seq, runner_id, body, code, reason, quarantined_at)"
                " SELECT seq, runner_id, body, ?, ?, ? FROM outbox WHERE seq = ?",
                (code, reason, time.time(), seq),
            )
            conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            if row is not None and self._spool_bytes is not None:
                self._spool_bytes -= int(row[0])

        await self._store.db.run(op)

    async def acknowledge(self, runner_id: str, upto: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            freed = conn.execute(
                "SELECT COALESCE(SUM(length(body)), 0) FROM outbox WHERE runner_id = ? AND seq <= ?", (runner_id, upto)
            ).fetchone()[0]
            conn.execute("DELETE FROM outbox WHERE runner_id = ? AND seq <= ?", (runner_id, upto))
            if self._spool_bytes is not None:
                self._spool_bytes -= int(freed)
            # Protection is left as it is: the batch read ahead of this acknowledgement is about to be sent.

        await self._store.db.run(op)

    async def spool_bytes(self) -> int:
        """The size of the unacknowledged entries on disk."""

        def op(conn: sqlite3.Connection) -> int:
            if self._spool_bytes is None:
                self._grew(conn, 0)
            return self._spool_bytes or 0

        return await self._store.db.run(op)


class Shipper:
    """Sends the outbox over the channel, one batch at a time, and deletes what the coordinator acknowledged."""

    def __init__(
        self,
        outbox: Outbox,
        channel: Channel,
        identity: Callable[[], Identity],
        on_forgotten: Callable[[], None],
        timeout: float,
        on_quarantined: Callable[[], None] = lambda: None,
    ) -> None:
        self._outbox = outbox
        self._channel = channel
        self._identity = identity
        self._on_forgotten = on_forgotten
        self._timeout = timeout
        self._on_quarantined = on_quarantined
        self._limit = BATCH_LIMIT  # halved on each refusal, to find the entry the coordinator refuses
        self._refusals = 0  # consecutive refusals of a single entry with a server error
        self._last_send = 0.0
        self._to_acknowledge = 0  # acknowledged by the coordinator, deleted during the next send
        self.failures = 0
        self.quarantined = 0
        self.batches_sent = 0
        """Frames of events sent since start (for tests and benchmarks)."""

    async def run(self) -> None:
        backoff = 0.05
        while True:
            await self._outbox.pending.wait()
            await self._pace()
            self._outbox.pending.clear()
            await self._channel.connected.wait()
            identity = self._identity()
            batch = await self._outbox.pending_batch(identity.runner_id, limit=self._limit)
            while batch is not None:
                try:
                    acked, ahead = await self._send_reading_ahead(identity, batch)
                except CoordinatorUnreachable as e:
                    # Not sent (no channel): certainly not delivered. Cut later: perhaps applied.
                    self._outbox.unsent(batch, maybe_delivered=not isinstance(e, ChannelDown) or e.sent)
                    self.failures += 1
                    log.warning("coordinator unreachable; events kept for resend", error=str(e))
                    await self._channel.connected.wait()
                except (RunnerNotFound, AuthenticationRequired):
                    log.warning("coordinator no longer knows this runner", runner_id=identity.runner_id)
                    self._on_forgotten()
                    break
                except ApiError as e:
                    self._outbox.unsent(batch, maybe_delivered=False)  # an answer: nothing was applied
                    self.failures += 1
                    if not await self._refused(batch, e):
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, MAX_BACKOFF)
                else:
                    backoff, self._refusals = 0.05, 0
                    self._limit = min(self._limit * 2, BATCH_LIMIT)
                    if ahead is None or acked < batch.last_seq or not ahead.full(self._limit, self._outbox.batch_bytes):
                        await self._outbox.acknowledge(identity.runner_id, acked)
                        await self._pace()  # not full: let what arrives meanwhile join it
                        ahead = await self._outbox.pending_batch(identity.runner_id, limit=self._limit)
                    else:
                        self._to_acknowledge = acked  # deleted while the next batch is on its way
                    batch = ahead
                    continue
                identity = self._identity()
                batch = await self._outbox.pending_batch(identity.runner_id, limit=self._limit)  # the oldest again

    async def _pace(self) -> None:
        """Wait until ``BATCH_DELAY`` after the previous send (at once after a quiet spell)."""
        wait = self._last_send + BATCH_DELAY - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _refused(self, batch: Batch, error: ApiError) -> bool:
        """The coordinator refused a batch: one bad entry must not stall the runner, so split the batch until
        the refused entry is alone, then put it aside (quarantine) and let the rest flow. A single entry refused
        as invalid (4xx) is quarantined at once; one the coordinator failed on (5xx) after ``REFUSALS`` tries,
        so an outage of its database does not set good entries aside. ``True``: retry at once."""
        if batch.count > 1:
            self._limit = max(1, batch.count // 2)
            log.warning("coordinator refused an event batch; splitting it", code=error.code, entries=batch.count)
            return True
        self._refusals += 1
        if error.status >= 500 and self._refusals < REFUSALS:
            log.error("coordinator failed on an event; will retry", code=error.code, error=error.message)
            return False
        await self._outbox.quarantine(batch.last_seq, error.code, error.message)
        self._refusals = 0
        self.quarantined += 1
        self._on_quarantined()
        log.error(
            "coordinator refused an event; quarantined in the agent's store",
            seq=batch.last_seq,
            code=error.code,
            error=error.message,
        )
        return True

    async def _send_reading_ahead(self, identity: Identity, batch: Batch) -> tuple[int, Batch | None]:
        """Send a batch and, while the coordinator stores it, delete what it acknowledged before and read the
        next batch: the local work is then off the critical path (the coordinator applies batches strictly one
        after the other anyway). The deletion is awaited whatever becomes of the send."""
        sending = asyncio.create_task(self._send(batch), name="shipper:send")
        try:
            if self._to_acknowledge:
                upto, self._to_acknowledge = self._to_acknowledge, 0
                await self._outbox.acknowledge(identity.runner_id, upto)
            ahead = await self._outbox.pending_batch(identity.runner_id, after=batch.last_seq, limit=self._limit)
            return await sending, ahead
        finally:
            if not sending.done():
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)

    async def _send(self, batch: Batch) -> int:
        self._last_send = asyncio.get_running_loop().time()
        self.batches_sent += 1
        answer = await self._channel.request("events", f'{{"events":[{batch.events}]}}', self._timeout)
        return int(answer["acked_seq"])
