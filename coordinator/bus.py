"""The fleet bus: what coordinators sharing one database tell each other, so any of them serves any runner.

An agent's channel ends at one coordinator (``coordinator.proxy``). Through the bus:

- **calls** for a runner whose channel is on another coordinator go to that one (its *holder*), which makes
  the call on the channel and sends the answer (or the typed error) back;
- **wake-ups**: a job stored through one coordinator wakes the holder's dispatcher, which delivers it;
- **live events** (``coordinator.hub``) and **log entries** (the SSE log feed) reach the followers connected to
  every coordinator.

A :class:`FleetBus` does this; :class:`BusHandlers` is what it calls on the receiving side.

- :class:`LocalBus`: a coordinator alone on its (SQLite) database. Nothing to forward: a runner without a
  channel here has none anywhere, so a call is ``RUNNER_UNAVAILABLE`` at once.
- :class:`PostgresBus`: ``LISTEN``/``NOTIFY`` on a dedicated connection. The holder of each channel is recorded
  in ``coordinator_channels``; each coordinator listens on its own inbox (direct messages: calls, replies,
  wake-ups) and on one broadcast channel (events, logs), and holds a session advisory lock named by its id
  while its bus is open, so that a row whose coordinator is gone (its connection ended: stopped, killed,
  partitioned) is known to be stale at once. Messages are sent in order by one sender task, consecutive ones
  to the same channel packed into one ``NOTIFY``; a message too large for a ``NOTIFY`` payload (8000 bytes)
  goes in a ``fleet_messages`` row that the notification names by id. One receiver task handles what arrives
  in order.

Fallbacks when the holder is gone: a call is ``RUNNER_UNAVAILABLE`` (503) at once when the holder's row is
stale or missing, and within the call's timeout plus :data:`FORWARD_MARGIN` when the holder does not answer; a
wake-up for a gone holder does nothing: the job stays held (``queued``) until the agent reconnects to some
coordinator, whose dispatcher delivers it on the agent's hello.

Wiring: ``coordinator.scaleout`` picks the implementation and connects it (``AgentClient.bus``, ``Hub.relay``,
and :class:`BusHandlers` calling ``AgentClient.call_here``, ``Dispatcher.kick``, ``Hub.deliver`` and
``LogFeed.publish``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import structlog
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from coordinator import pg
from shared.errors import ApiError, InternalError, RunnerUnavailable, from_envelope
from shared.models import AgentEvent, JobEvent, LogEvent
from shared.tasks import TaskSet

if TYPE_CHECKING:
    import asyncpg

log = structlog.get_logger(__name__)

FORWARD_MARGIN = 1.0
"""Seconds a forwarded call waits beyond its own timeout for the holder's answer (the holder times out first)."""
NOTIFY_LIMIT = 7900
"""Largest ``NOTIFY`` payload sent (PostgreSQL refuses 8000 bytes and more)."""
BROADCAST = "rustci_bus"
MESSAGE_TTL = 300.0
"""Seconds a large broadcast message's row is kept for the coordinators to read."""
# --- what crosses between coordinators ------------------------------------------------------------------


class CallMessage(BaseModel):
    t: Literal["call"] = "call"
    id: str
    reply_to: str
    runner_id: str
    kind: str
    body: Any = None
    timeout: float


class ReplyMessage(BaseModel):
    t: Literal["reply"] = "reply"
    id: str
    status: int = 200
    """200: ``body`` is the answer; otherwise ``body`` is the error envelope the call ended with."""
    body: Any = None


class WakeMessage(BaseModel):
    t: Literal["wake"] = "wake"
    runner_id: str


class EventMessage(BaseModel):
    t: Literal["event"] = "event"
    origin: str
    event: dict[str, Any]


class LogsMessage(BaseModel):
    t: Literal["logs"] = "logs"
    origin: str
    runner_id: str
    events: list[AgentEvent]


class RefMessage(BaseModel):
    """A message too large for a notification: it is in ``fleet_messages`` row ``id``."""

    t: Literal["ref"] = "ref"
    id: int


BusMessage = Annotated[
    CallMessage | ReplyMessage | WakeMessage | EventMessage | LogsMessage | RefMessage, Field(discriminator="t")
]
MESSAGES: TypeAdapter[list[BusMessage]] = TypeAdapter(list[BusMessage])


# --- the seam -------------------------------------------------------------------------------------------


async def _no_call(runner_id: str, kind: str, body: Any, timeout: float) -> Any:
    raise RunnerUnavailable(f"Runner '{runner_id}' is not connected to this coordinator", runner_id=runner_id)


@dataclass
class BusHandlers:
    """What the receiving coordinator does with what the bus brings."""

    call: Callable[[str, str, Any, float], Awaitable[Any]] = _no_call
    """Make a call on a channel held here: ``(runner_id, kind, body, timeout)`` → the answer's body."""
    wake: Callable[[str], None] = lambda runner_id: None
    """Deliver the runner's held jobs (its channel is here)."""
    event: Callable[[dict[str, Any]], None] = lambda event: None
    """A live event published on another coordinator, for the WebSocket followers here."""
    logs: Callable[[str, Sequence[AgentEvent]], None] = lambda runner_id, events: None
    """Log entries (and job ends) stored through another coordinator, for the SSE followers here."""


class FleetBus(Protocol):
    coordinator_id: str
    handlers: BusHandlers

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def channel_opened(self, runner_id: str) -> None:
        """This coordinator now holds the runner's channel."""
        ...

    def channel_closed(self, runner_id: str) -> None:
        """The runner's channel here ended (a newer one elsewhere keeps its record)."""
        ...

    async def call(self, runner_id: str, kind: str, body: Any, timeout: float) -> Any:
        """Make the call at the coordinator holding the runner's channel; ``RUNNER_UNAVAILABLE`` if none does."""
        ...

    async def held_elsewhere(self) -> set[str]:
        """The runners whose channel another live coordinator holds (candidates for jobs routed by tags here)."""
        ...

    def wake(self, runner_id: str) -> None:
        """A job was stored for a runner whose channel is not here: have its holder deliver it."""
        ...

    def publish_event(self, event: dict[str, Any]) -> None: ...

    def publish_logs(self, runner_id: str, events: Sequence[AgentEvent]) -> None: ...


def not_connected(runner_id: str, why: str = "its agent has no open channel to any coordinator") -> RunnerUnavailable:
    return RunnerUnavailable(f"Runner '{runner_id}' is not connected: {why}", runner_id=runner_id)


class LocalBus:
    """A coordinator alone on its database: nothing to forward."""

    coordinator_id = "local"

    def __init__(self) -> None:
        self.handlers = BusHandlers()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def channel_opened(self, runner_id: str) -> None:
        return None

    def channel_closed(self, runner_id: str) -> None:
        return None

    async def call(self, runner_id: str, kind: str, body: Any, timeout: float) -> Any:
        raise not_connected(runner_id, "its agent has no open channel to this coordinator")

    async def held_elsewhere(self) -> set[str]:
        return set()

    def wake(self, runner_id: str) -> None:
        return None

    def publish_event(self, event: dict[str, Any]) -> None:
        return None

    def publish_logs(self, runner_id: str, events: Sequence[AgentEvent]) -> None:
        return None


# --- PostgreSQL -----------------------------------------------------------------------------------------


@dataclass
class _Outgoing:
    channel: str | None
    """``None``: ``sql`` is a statement to run (in order with the notifications), not a message."""
    message: BaseModel | None = None
    sql: str = ""
    args: tuple[Any, ...] = field(default_factory=tuple)


ALIVE = """EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND ((l.classid::bigint << 32) | l.objid::bigint) = split_part(c.coordinator_id, ':', 3)::bigint
)"""
"""Whether the coordinator of row ``c`` still holds the lock its bus takes (its session is alive)."""
HOLDER = f"SELECT c.coordinator_id, {ALIVE} AS alive FROM coordinator_channels c WHERE c.runner_id = $1"
SEND_TO_HOLDER = f"""
SELECT c.coordinator_id, pg_notify(
    'rustci_bus_' || left(encode(sha256(convert_to(c.coordinator_id, 'UTF8')), 'hex'), 32), $3
)
FROM coordinator_channels c WHERE c.runner_id = $1 AND c.coordinator_id <> $2 AND {ALIVE}
"""
"""Find the runner's live holder (not this coordinator) and notify its inbox (:func:`inbox_of`): one round trip."""
HELD_ELSEWHERE = f"SELECT c.runner_id FROM coordinator_channels c WHERE c.coordinator_id <> $1 AND {ALIVE}"


def inbox_of(coordinator_id: str) -> str:
    return "rustci_bus_" + hashlib.sha256(coordinator_id.encode()).hexdigest()[:32]


class PostgresBus:
    """The bus over ``LISTEN``/``NOTIFY`` (see the module docstring)."""

    def __init__(self, connections: pg.Connections, forward_margin: float = FORWARD_MARGIN) -> None:
        self._connections = connections
        self._margin = forward_margin
        self._key = secrets.randbits(62) + 1
        self.coordinator_id = f"{socket.gethostname()}:{os.getpid()}:{self._key}"
        """``host:pid:lock``; ``lock`` is the advisory lock held while the bus is open."""
        self.inbox = inbox_of(self.coordinator_id)
        self.handlers = BusHandlers()
        self._listen: asyncpg.Connection | None = None
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._inbound: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._replies: dict[str, asyncio.Future[ReplyMessage]] = {}
        self._tasks = TaskSet("bus")
        self._calls = TaskSet("bus-call")
        self._failures: tuple[type[BaseException], ...] = (ApiError,)
        """What a failed database round trip raises (asyncpg's errors added at ``open()``)."""

    async def open(self) -> None:
        self._failures = (ApiError, *pg.connection_errors())
        conn = await pg.dedicated(self._connections.url)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", self._key)
            await conn.add_listener(self.inbox, self._notified)
            await conn.add_listener(BROADCAST, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._listen = conn
        conn.add_termination_listener(lambda _conn: log.error("fleet bus: its database connection dropped"))
        self._tasks.spawn(self._send_forever(), "send")
        self._tasks.spawn(self._receive_forever(), "receive")
        log.info("fleet bus open", coordinator_id=self.coordinator_id)

    async def close(self) -> None:
        await self._calls.close()
        with contextlib.suppress(TimeoutError):  # what is queued still goes out (channel records above all)
            async with asyncio.timeout(2.0):
                await self._outbox.join()
        await self._tasks.close()
        for waiter in self._replies.values():
            if not waiter.done():
                waiter.set_exception(RunnerUnavailable("The coordinator is shutting down; retry the call"))
        with contextlib.suppress(*self._failures):
            async with self._connections.connection() as conn:
                await conn.execute("DELETE FROM coordinator_channels WHERE coordinator_id = $1", self.coordinator_id)
        conn, self._listen = self._listen, None
        if conn is not None:
            try:
                await conn.close(timeout=2)
            except pg.connection_errors():
                conn.terminate()

    # --- channels ---

    def channel_opened(self, runner_id: str) -> None:
        self._outbox.put_nowait(
            _Outgoing(
                None,
                sql="INSERT INTO coordinator_channels (runner_id, coordinator_id, since) VALUES ($1, $2, $3)"
                " ON CONFLICT (runner_id) DO UPDATE SET coordinator_id = excluded.coordinator_id,"
                " since = excluded.since",
                args=(runner_id, self.coordinator_id, time.time()),
            )
        )

    def channel_closed(self, runner_id: str) -> None:
        self._outbox.put_nowait(
            _Outgoing(
                None,
                sql="DELETE FROM coordinator_channels WHERE runner_id = $1 AND coordinator_id = $2",
                args=(runner_id, self.coordinator_id),
            )
        )

    async def holder(self, runner_id: str) -> str | None:
        """The coordinator holding the runner's channel, if it is still there."""
        async with self._connections.connection() as conn:
            row = await conn.fetchrow(HOLDER, runner_id)
        if row is None or not row["alive"]:
            return None
        return str(row["coordinator_id"])

    async def held_elsewhere(self) -> set[str]:
        async with self._connections.connection() as conn:
            rows = await conn.fetch(HELD_ELSEWHERE, self.coordinator_id)
        return {str(r["runner_id"]) for r in rows}

    # --- calls ---

    async def send_to_holder(self, runner_id: str, message: BaseModel) -> bool:
        """Send ``message`` to the inbox of the coordinator holding the runner's channel; ``False`` when no
        coordinator (but this one) holds it. A small message takes one round trip (lookup and ``NOTIFY`` in one
        statement); a large one is stored first, ordered with this coordinator's other messages."""
        text = "[" + message.model_dump_json() + "]"
        if len(text.encode()) <= NOTIFY_LIMIT:
            async with self._connections.connection() as conn:
                holder = await conn.fetchval(SEND_TO_HOLDER, runner_id, self.coordinator_id, text)
            return holder is not None
        holder = await self.holder(runner_id)
        if holder is None or holder == self.coordinator_id:
            return False
        self._outbox.put_nowait(_Outgoing(inbox_of(holder), message))
        return True

    async def call(self, runner_id: str, kind: str, body: Any, timeout: float) -> Any:
        call = CallMessage(
            id=uuid.uuid4().hex, reply_to=self.inbox, runner_id=runner_id, kind=kind, body=body, timeout=timeout
        )
        answer: asyncio.Future[ReplyMessage] = asyncio.get_running_loop().create_future()
        self._replies[call.id] = answer
        try:
            if not await self.send_to_holder(runner_id, call):
                raise not_connected(runner_id)
            async with asyncio.timeout(timeout + self._margin):
                reply = await answer
        except TimeoutError as e:
            raise not_connected(
                runner_id, f"the coordinator holding its channel did not answer within {timeout + self._margin:g}s"
            ) from e
        finally:
            self._replies.pop(call.id, None)
        if reply.status != 200:
            raise from_envelope(reply.status, reply.body)
        return reply.body

    async def _answer(self, call: CallMessage) -> None:
        try:
            body = await self.handlers.call(call.runner_id, call.kind, call.body, call.timeout)
            reply = ReplyMessage(id=call.id, body=body.model_dump(mode="json") if isinstance(body, BaseModel) else body)
        except ApiError as e:
            reply = ReplyMessage(id=call.id, status=e.status, body=e.envelope())
        except Exception:
            log.exception("fleet bus: a forwarded call failed", runner_id=call.runner_id, kind=call.kind)
            error = InternalError("The coordinator holding the runner's channel failed to make the call")
            reply = ReplyMessage(id=call.id, status=error.status, body=error.envelope())
        self._outbox.put_nowait(_Outgoing(call.reply_to, reply))

    # --- wake-ups, events, logs ---

    def wake(self, runner_id: str) -> None:
        self._tasks.spawn(self._wake(runner_id), f"wake:{runner_id}")

    async def _wake(self, runner_id: str) -> None:
        try:
            await self.send_to_holder(runner_id, WakeMessage(runner_id=runner_id))
        except Exception as e:  # the job stays held: the agent's next hello or heartbeat delivers it
            log.warning("fleet bus: could not wake the runner's coordinator", runner_id=runner_id, error=str(e))

    def publish_event(self, event: dict[str, Any]) -> None:
        self._outbox.put_nowait(_Outgoing(BROADCAST, EventMessage(origin=self.coordinator_id, event=event)))

    def publish_logs(self, runner_id: str, events: Sequence[AgentEvent]) -> None:
        shown = [e for e in events if isinstance(e, LogEvent) or (isinstance(e, JobEvent) and e.final)]
        if shown:
            message = LogsMessage(origin=self.coordinator_id, runner_id=runner_id, events=shown)
            self._outbox.put_nowait(_Outgoing(BROADCAST, message))

    # --- sending ---

    async def _send_forever(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                async with self._connections.connection() as conn:
                    await self._send(conn, batch)
            except Exception as e:
                # Lost: a forwarded call then ends as RUNNER_UNAVAILABLE, a follower misses live events.
                log.warning("fleet bus: messages not sent", count=len(batch), error=f"{type(e).__name__}: {e}")
            finally:
                for _ in batch:
                    self._outbox.task_done()

    async def _send(self, conn: asyncpg.Connection, batch: list[_Outgoing]) -> None:
        channel: str | None = None
        parts: list[str] = []
        size = 0

        async def flush() -> None:
            nonlocal parts, size
            if parts and channel is not None:
                await conn.execute("SELECT pg_notify($1, $2)", channel, "[" + ",".join(parts) + "]")
            parts, size = [], 0

        for item in batch:
            if item.channel is None:
                await flush()
                await conn.execute(item.sql, *item.args)
                continue
            assert item.message is not None
            text = item.message.model_dump_json()
            if len(text.encode()) + 2 > NOTIFY_LIMIT:
                text = (await self._stored(conn, item.channel, text)).model_dump_json()
            if item.channel != channel or size + len(text.encode()) + 1 > NOTIFY_LIMIT - 2:
                await flush()
                channel = item.channel
            parts.append(text)
            size += len(text.encode()) + 1
        await flush()

    async def _stored(self, conn: asyncpg.Connection, channel: str, text: str) -> RefMessage:
        now = time.time()
        if channel == BROADCAST:  # read by every coordinator: kept a while, then pruned
            await conn.execute("DELETE FROM fleet_messages WHERE created_at < $1", now - MESSAGE_TTL)
        row_id: int = await conn.fetchval(
            "INSERT INTO fleet_messages (payload, created_at) VALUES ($1, $2) RETURNING id", "[" + text + "]", now
        )
        return RefMessage(id=row_id)

    # --- receiving ---

    def _notified(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        self._inbound.put_nowait((channel, str(payload)))

    async def _receive_forever(self) -> None:
        while True:
            channel, payload = await self._inbound.get()
            try:
                for message in MESSAGES.validate_json(payload):
                    await self._handle(channel, message)
            except ValidationError as e:
                log.warning("fleet bus: a message did not validate", error=str(e))
            except Exception:
                log.exception("fleet bus: a message could not be handled", channel=channel)

    async def _handle(self, channel: str, message: BusMessage) -> None:
        if isinstance(message, RefMessage):
            for stored in await self._fetch(channel, message.id):
                await self._handle(channel, stored)
        elif isinstance(message, CallMessage):
            self._calls.spawn(self._answer(message), f"call:{message.runner_id}")
        elif isinstance(message, ReplyMessage):
            waiter = self._replies.get(message.id)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
        elif isinstance(message, WakeMessage):
            self.handlers.wake(message.runner_id)
        elif message.origin != self.coordinator_id:  # a broadcast comes back to its sender too
            if isinstance(message, EventMessage):
                self.handlers.event(message.event)
            else:
                self.handlers.logs(message.runner_id, message.events)

    async def _fetch(self, channel: str, row_id: int) -> list[BusMessage]:
        async with self._connections.connection() as conn:
            if channel == BROADCAST:
                payload = await conn.fetchval("SELECT payload FROM fleet_messages WHERE id = $1", row_id)
            else:  # a direct message has one reader
                payload = await conn.fetchval("DELETE FROM fleet_messages WHERE id = $1 RETURNING payload", row_id)
        if payload is None:
            log.warning("fleet bus: a large message was gone before it was read", id=row_id)
            return []
        return MESSAGES.validate_json(payload)
