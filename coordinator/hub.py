"""Live events for WebSocket clients: fan-out with a bounded queue per client.

Publishing never waits on a client. A client that falls more than its queue behind is disconnected with
close code 1008 (policy violation) and a reason, so one slow consumer never slows the coordinator or others.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import WSCloseCode, web

from shared.http import dumps

log = structlog.get_logger(__name__)

QUEUE_LIMIT = 1000


@dataclass(eq=False)
class Subscriber:
    runner_id: str | None
    event_types: frozenset[str]
    queue: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: bool = False

    def wants(self, event: dict[str, Any]) -> bool:
        if self.runner_id and event.get("runner_id") != self.runner_id:
            return False
        return not self.event_types or event.get("type") in self.event_types


class Hub:
    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def client_count(self) -> int:
        return len(self._subscribers)

    def publish(self, event: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        text = dumps(event)
        for sub in list(self._subscribers):
            if sub.overflowed or not sub.wants(event):
                continue
            try:
                sub.queue.put_nowait(text)
            except asyncio.QueueFull:
                sub.overflowed = True
                sub.queue = asyncio.Queue(1)
                sub.queue.put_nowait(None)  # wakes the sender, which closes the socket

    def subscribe(self, runner_id: str | None, event_types: frozenset[str]) -> Subscriber:
        sub = Subscriber(runner_id, event_types)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def track(self, ws: web.WebSocketResponse) -> None:
        self._sockets.add(ws)

    def untrack(self, ws: web.WebSocketResponse) -> None:
        self._sockets.discard(ws)

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"coordinator shutting down")
