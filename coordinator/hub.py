"""Live events for WebSocket clients: fan-out with a bounded queue per client.

Publishing never waits on a client: it encodes the event once and puts it in each interested client's queue.
A client that falls more than ``queue_limit`` events behind is dropped from the fan-out at once and its
connection is told to close with code 1008 (policy violation) and a reason; its handler then closes it, and if
the client does not even read the close frame within ``close_timeout``, drops the connection. So one slow
consumer costs the coordinator a bounded amount of memory and never slows the others.

In a fleet of coordinators every event published here is also handed to ``relay`` (the fleet bus,
``coordinator.bus``), and the events published on the others come in through :meth:`Hub.deliver`, so a client
sees every event whichever coordinator it is connected to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import WSCloseCode

from shared.http import dumps

log = structlog.get_logger(__name__)

QUEUE_LIMIT = 1000
TOO_SLOW = b"client too slow: event queue overflowed"
SHUTTING_DOWN = b"coordinator shutting down"


@dataclass(eq=False)
class Subscriber:
    """One connected client: what it asked for, its queue, and whether it has been told to go."""

    runner_id: str | None
    event_types: frozenset[str]
    queue: asyncio.Queue[str]
    close_code: int | None = None
    close_reason: bytes = b""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, event: dict[str, Any]) -> bool:
        if self.runner_id and event.get("runner_id") != self.runner_id:
            return False
        return not self.event_types or event.get("type") in self.event_types

    def stop(self, code: int, reason: bytes) -> None:
        """Ask the connection's handler to close with ``code`` (the first reason given wins)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self.stopping.set()


class Hub:
    def __init__(self, queue_limit: int = QUEUE_LIMIT, close_timeout: float = 5.0) -> None:
        self.queue_limit = queue_limit
        self.close_timeout = close_timeout
        self.slow_disconnects = 0
        self._fanout: set[Subscriber] = set()
        """Subscribers that still receive events."""
        self._connected: set[Subscriber] = set()
        """Every connection whose handler has not finished (including ones told to close)."""
        self._closing = False
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        """In-process observers of every event (e.g. ``coordinator.routing``), called before the fan-out."""
        self.relay: Callable[[dict[str, Any]], None] | None = None
        """Where the events published here go for the other coordinators of a fleet."""

    @property
    def client_count(self) -> int:
        return len(self._connected)

    def publish(self, event: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(event)
        if self.relay is not None:
            self.relay(event)
        self.deliver(event)

    def deliver(self, event: dict[str, Any]) -> None:
        """Hand ``event`` to the clients connected here (an event from another coordinator comes in here)."""
        if not self._fanout:
            return
        text: str | None = None
        for sub in list(self._fanout):
            if not sub.wants(event):
                continue
            text = text if text is not None else dumps(event)
            try:
                sub.queue.put_nowait(text)
            except asyncio.QueueFull:
                self._fanout.discard(sub)
                self.slow_disconnects += 1
                log.warning("websocket client too slow; disconnecting", queued=self.queue_limit)
                sub.stop(WSCloseCode.POLICY_VIOLATION, TOO_SLOW)

    def subscribe(self, runner_id: str | None, event_types: frozenset[str]) -> Subscriber:
        sub = Subscriber(runner_id, event_types, asyncio.Queue(self.queue_limit))
        self._connected.add(sub)
        if self._closing:
            sub.stop(WSCloseCode.GOING_AWAY, SHUTTING_DOWN)
        else:
            self._fanout.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Called by the connection's handler when it is done with the connection."""
        self._fanout.discard(sub)
        self._connected.discard(sub)
        sub.finished.set()

    async def close(self) -> None:
        """Tell every client the coordinator is going away and wait (bounded) for their handlers to close them."""
        self._closing = True
        subs = list(self._connected)
        for sub in subs:
            self._fanout.discard(sub)
            sub.stop(WSCloseCode.GOING_AWAY, SHUTTING_DOWN)
        if subs:
            waits = [asyncio.ensure_future(sub.finished.wait()) for sub in subs]
            _, pending = await asyncio.wait(waits, timeout=self.close_timeout + 1.0)
            if pending:
                log.warning("websocket handlers did not finish closing in time", count=len(pending))
                for waiter in pending:
                    waiter.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
