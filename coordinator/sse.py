"""Following a runner's log over Server-Sent Events.

The response itself comes from aiohttp-sse: the headers, the ``id``/``event``/``data`` framing, the task
that writes a keep-alive comment every ``keepalive_interval`` seconds, and the abort of a client that stops
reading (send timeout, ``TCP_USER_TIMEOUT``). This module adds what is ours:

- :class:`LogFeed`, the fan-out of freshly stored entries to the followers of their runner. Publishing never
  waits: each follower queues at most ``queue_limit`` entries, and one that falls further behind drops its
  queue and catches up from the database instead, so a slow client neither slows ingestion nor misses entries.
- :func:`follow`, one stream's life: the backlog, then live entries, until the client goes away (noticed at
  the next keep-alive at the latest) or the coordinator shuts down (``LogFeed.close`` in ``on_shutdown``).
  A stream of one job (``job_id=``) also ends once the job is over, after its last line (as ``kubectl logs
  -f`` ends with its pod): the agent reports a job's outcome after every line the job printed, so once the
  store says the job is finished, one last read from the database finds them all.

No gap and no duplicate between backlog and live entries: a stream subscribes *before* it reads the backlog,
so an entry stored meanwhile is in the backlog, in the queue or in both, and the stream never sends an entry
at or below the last sequence it has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from coordinator import keys
from coordinator.store.base import Store
from coordinator.store.logs import PAGE, LogEntry, LogFilter, log_entries
from coordinator.store.protocols import LogStore
from shared.http import dumps
from shared.models import TERMINAL_JOB_STATUSES, AgentEvent, JobEvent

log = structlog.get_logger(__name__)


class Follower:
    """The live entries of one runner for one stream, bounded."""

    def __init__(self, runner_id: str, limit: int) -> None:
        self.runner_id = runner_id
        self._limit = limit
        self._queue: list[LogEntry] = []
        self._wake = asyncio.Event()
        self.overflowed = False
        """The queue was dropped: the stream must catch up from the database."""
        self.closed = False
        self.finished_jobs: set[str] = set()
        """Jobs of this runner whose outcome arrived since the stream began."""

    def push(self, entries: list[LogEntry]) -> None:
        if self.closed or self.overflowed:
            return
        if len(self._queue) + len(entries) > self._limit:
            self.overflowed = True
            self._queue = []
        else:
            self._queue.extend(entries)
        self._wake.set()

    async def take(self, timeout: float) -> list[LogEntry]:
        """The entries queued since the last call; waits up to ``timeout`` seconds for some."""
        if not self._queue and not self.overflowed and not self.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        self._wake.clear()
        entries, self._queue = self._queue, []
        return entries

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def job_finished(self, job_id: str) -> None:
        self.finished_jobs.add(job_id)
        self._wake.set()


class LogFeed:
    def __init__(self, queue_limit: int) -> None:
        self.queue_limit = queue_limit
        self._followers: dict[str, set[Follower]] = {}
        self.closed = False
        self.listeners: list[Callable[[str, Sequence[AgentEvent]], None]] = []
        """Called with every batch stored, followers or not (log retention counts what was written)."""

    @property
    def follower_count(self) -> int:
        return sum(map(len, self._followers.values()))

    def publish(self, runner_id: str, events: Sequence[AgentEvent]) -> None:
        """Hand the log entries of a batch just stored to the runner's followers (resent ones are harmless)."""
        for listener in self.listeners:
            listener(runner_id, events)
        followers = self._followers.get(runner_id)
        if not followers:
            return
        entries = log_entries(events)
        if entries:
            for follower in followers:
                follower.push(entries)
        for event in events:
            if isinstance(event, JobEvent) and event.final and event.status in TERMINAL_JOB_STATUSES:
                for follower in followers:
                    follower.job_finished(event.job_id)

    def follow(self, runner_id: str) -> Follower:
        follower = Follower(runner_id, self.queue_limit)
        if self.closed:
            follower.close()
        else:
            self._followers.setdefault(runner_id, set()).add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        followers = self._followers.get(follower.runner_id)
        if followers is not None:
            followers.discard(follower)
            if not followers:
                del self._followers[follower.runner_id]

    def close(self) -> None:
        """End every stream (coordinator shutdown)."""
        self.closed = True
        for followers in self._followers.values():
            for follower in followers:
                follower.close()


def setup_log_feed(app: web.Application) -> None:
    app[keys.LOG_FEED] = LogFeed(app[keys.CONFIG].log_stream.queue_limit)

    async def close_streams(app: web.Application) -> None:
        app[keys.LOG_FEED].close()  # before the server waits for handlers to finish

    app.on_shutdown.append(close_streams)


@dataclass(frozen=True)
class Start:
    """Where a stream's backlog begins: after ``after_seq`` (``Last-Event-ID``), at ``where.since``, or with
    the last ``tail`` matching entries."""

    after_seq: int | None
    tail: int


async def follow(
    request: web.Request, runner_id: str, where: LogFilter, start: Start, keepalive: float
) -> web.StreamResponse:
    feed = request.app[keys.LOG_FEED]
    follower = feed.follow(runner_id)  # before the backlog is read: see the module docstring
    try:
        async with sse_response(request, sep="\n", ping_interval=keepalive) as response:
            stream = _Stream(response, follower, request.app[keys.LOG_STORE], request.app[keys.STORE], runner_id, where)
            with contextlib.suppress(ConnectionResetError):  # the client went away mid-write
                await stream.backlog(start)
                await stream.live(request, keepalive)
        return response
    finally:
        feed.unfollow(follower)


class _Stream:
    def __init__(
        self,
        response: EventSourceResponse,
        follower: Follower,
        store: LogStore,
        jobs: Store,
        runner_id: str,
        where: LogFilter,
    ) -> None:
        self._response = response
        self._store_of_jobs = jobs
        self._follower = follower
        self._store = store
        self._runner_id = runner_id
        self._where = where
        self._cursor = 0
        """The highest sequence passed (sent or filtered out): nothing at or below it is sent again."""

    async def backlog(self, start: Start) -> None:
        if start.after_seq is not None or self._where.since is not None:
            self._cursor = start.after_seq or 0
            await self._catch_up()
            return
        page = await self._store.page(self._runner_id, self._where, start.tail, oldest_first=False)
        await self._send(page.entries)

    async def live(self, request: web.Request, keepalive: float) -> None:
        entries: list[LogEntry] = []
        while not self._follower.closed and self._response.is_connected():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            if await self._job_over(ask_store=not entries):
                await self._catch_up()
                return
            entries = await self._follower.take(keepalive)
            if self._follower.overflowed:
                log.info("log follower fell behind; catching up from the database", runner_id=self._runner_id)
                self._follower.overflowed = False  # queue again from here: what arrives meanwhile is not lost
                await self._catch_up()
            else:
                await self._send(entries)

    async def _job_over(self, ask_store: bool) -> bool:
        """Following one job: whether it has finished (told by the feed, else read from the store; a job the
        coordinator itself cancelled while holding it is only seen in the store, at the next keep-alive)."""
        job_id = self._where.job_id
        if job_id is None:
            return False
        if job_id in self._follower.finished_jobs:
            return True
        if not ask_store:  # entries are flowing: the feed will say when the job ends
            return False
        # A job id the store does not know is only a filter: the stream goes on, as it always has.
        job = await self._store_of_jobs.get_job(job_id)
        return job is not None and job.runner_id == self._runner_id and job.status in TERMINAL_JOB_STATUSES

    async def _catch_up(self) -> None:
        while not self._follower.closed:
            entries = await self._store.after(self._runner_id, self._where, self._cursor, PAGE)
            await self._send(entries)
            if len(entries) < PAGE:
                return

    async def _send(self, entries: list[LogEntry]) -> None:
        for entry in entries:
            if entry.seq <= self._cursor:
                continue
            self._cursor = entry.seq
            if self._where.matches(entry):
                await self._response.send(dumps(entry.to_wire()), id=str(entry.seq), event="log")
