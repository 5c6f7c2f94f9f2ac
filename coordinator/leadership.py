"""Which coordinator of a fleet runs the fleet-wide duties (liveness, compaction): one at a time.

A :class:`Leadership` says whether this coordinator leads now and runs the work given to
:meth:`Leadership.while_leader` only then: started when leadership is won, cancelled when it is lost.

- :class:`SoleLeader`: a coordinator alone on its (SQLite) database always leads.
- :class:`AdvisoryLockLeadership`: on PostgreSQL the leader is the coordinator holding the session advisory
  lock :data:`LEADER_LOCK` on a dedicated connection. The others try ``pg_try_advisory_lock`` every
  ``retry_interval`` seconds; the leader checks its connection as often. A leader that stops (``close()``) or
  whose connection drops (the server then releases the lock) loses it, and another takes over within
  ``retry_interval``.

Wiring (``coordinator.app``)::

    leadership = SoleLeader() | AdvisoryLockLeadership(database.url)
    await leadership.open()
    leadership.while_leader("liveness", lambda: liveness.watch(...))
    ...
    await leadership.close()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from coordinator import pg
from shared.tasks import TaskSet

if TYPE_CHECKING:
    import asyncpg

log = structlog.get_logger(__name__)

LEADER_LOCK = 0x7275_7374_6369_0002
"""The advisory lock key of the fleet leader (``rustci`` and 2; the migrations hold ``rustci`` and 1 while they run,
so a coordinator starting while another leads is not kept waiting)."""
RETRY_INTERVAL = 2.0

Work = Callable[[], Coroutine[Any, Any, Any]]


class Leadership(Protocol):
    @property
    def leader(self) -> bool:
        """Whether this coordinator leads now."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Stop the leader's work and give up leadership."""
        ...

    def while_leader(self, name: str, work: Work) -> None:
        """Run ``work()`` (a long-lived coroutine) whenever this coordinator leads, cancelled when it stops."""
        ...


class _Duties:
    """The work a leader runs: started on winning, cancelled on losing."""

    def __init__(self) -> None:
        self._work: dict[str, Work] = {}
        self._tasks = TaskSet("leader")
        self.leader = False
        self.changed = asyncio.Event()
        """Set at each change of leadership (tests and logs wait on it)."""

    def add(self, name: str, work: Work) -> None:
        self._work[name] = work
        if self.leader:
            self._tasks.spawn(work(), name)

    async def become(self, leader: bool) -> None:
        if leader == self.leader:
            return
        self.leader = leader
        self.changed.set()
        self.changed = asyncio.Event()
        if leader:
            for name, work in self._work.items():
                self._tasks.spawn(work(), name)
        else:
            await self._tasks.close()

    async def close(self) -> None:
        await self.become(False)


class SoleLeader:
    """A coordinator alone on its database: always the leader."""

    def __init__(self) -> None:
        self._duties = _Duties()

    @property
    def leader(self) -> bool:
        return self._duties.leader

    async def open(self) -> None:
        await self._duties.become(True)

    async def close(self) -> None:
        await self._duties.close()

    def while_leader(self, name: str, work: Work) -> None:
        self._duties.add(name, work)


class AdvisoryLockLeadership:
    """Leader while holding a session advisory lock on a dedicated connection (see the module docstring)."""

    def __init__(self, url: str, retry_interval: float = RETRY_INTERVAL, key: int = LEADER_LOCK) -> None:
        self._url = url
        self._retry = retry_interval
        self._key = key
        self._duties = _Duties()
        self._conn: asyncpg.Connection | None = None
        self._dropped = asyncio.Event()
        self._tasks = TaskSet("leadership")
        self.attempts = 0
        """Rounds of the campaign so far (tries of the lock, or checks of the connection holding it)."""

    @property
    def leader(self) -> bool:
        return self._duties.leader

    @property
    def changed(self) -> asyncio.Event:
        return self._duties.changed

    def while_leader(self, name: str, work: Work) -> None:
        self._duties.add(name, work)

    async def open(self) -> None:
        with contextlib.suppress(*pg.connection_errors()):
            await self._attempt()  # the first coordinator up leads at once
        self._tasks.spawn(self._campaign(), "campaign")

    async def close(self) -> None:
        await self._tasks.close()
        await self._duties.close()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", self._key)
                await conn.close(timeout=2)
            except pg.connection_errors():
                conn.terminate()

    async def _campaign(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._retry):
                    await self._dropped.wait()
            try:
                await self._attempt()
            except pg.connection_errors() as e:
                log.warning("leadership: the database connection failed", error=str(e))
                await self._lost()

    async def _attempt(self) -> None:
        """Win the lock if free, or check that the connection holding it is still there."""
        self.attempts += 1
        if self._conn is None or self._conn.is_closed():
            await self._lost()
            self._dropped.clear()
            self._conn = await pg.dedicated(self._url)
            self._conn.add_termination_listener(lambda _conn: self._dropped.set())
        if self.leader:
            await self._conn.fetchval("SELECT 1", timeout=self._retry)
            return
        if await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key, timeout=self._retry):
            log.info("leadership won: this coordinator runs the fleet-wide duties")
            await self._duties.become(True)

    async def _lost(self) -> None:
        if self.leader:
            log.warning("leadership lost: its database connection dropped")
        await self._duties.become(False)
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
