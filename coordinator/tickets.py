"""Single-use tickets for clients that cannot send headers (a browser's ``WebSocket`` or ``EventSource``).

``POST /api/tickets`` (with a header credential) answers a ticket valid for one connection within 30 seconds;
the client opens ``/api/runners/ws?ticket=...`` or ``/api/runners/{id}/logs?follow=true&ticket=...``. The
ticket carries its issuer's principal, so it can do no more than the credential that asked for it. Tickets
live in this process's memory only: unused ones vanish with a restart, which costs a client one more request.
A long-lived credential in the URL (``?token=``) is refused: URLs end up in proxy logs and browser histories.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from aiohttp import web

from coordinator import keys
from coordinator.auth import Principal
from shared.http import json_response
from shared.models import TicketResponse
from shared.timeutil import from_epoch

PREFIX = "tk_"
TTL_SECONDS = 30.0
MAX_OUTSTANDING = 100_000
ROUTES = frozenset({"/api/runners/ws", "/api/runners/{runner_id}/logs"})
"""The streaming routes (WebSocket, Server-Sent Events) where ``?ticket=`` is accepted."""


class TicketBook:
    def __init__(self, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._tickets: dict[str, tuple[Principal, float]] = {}

    def issue(self, principal: Principal) -> str:
        now = self._clock()
        if len(self._tickets) >= MAX_OUTSTANDING:
            self._tickets = {t: entry for t, entry in self._tickets.items() if entry[1] > now}
            if len(self._tickets) >= MAX_OUTSTANDING:
                self._tickets.pop(next(iter(self._tickets)))  # the oldest
        ticket = PREFIX + secrets.token_urlsafe(32)
        self._tickets[ticket] = (principal, now + self.ttl)
        return ticket

    def redeem(self, ticket: str) -> Principal | None:
        """The ticket's principal, once: a second use, or a use after its expiry, gives ``None``."""
        entry = self._tickets.pop(ticket, None)
        if entry is None or entry[1] < self._clock():
            return None
        return entry[0]


def looks_like_ticket(value: str) -> bool:
    return value.startswith(PREFIX)


async def create_ticket(request: web.Request) -> web.Response:
    book = request.app[keys.TICKETS]
    ticket = book.issue(request[keys.PRINCIPAL])
    body = TicketResponse(
        ticket=ticket, expires_in=book.ttl, expires_at=from_epoch(time.time() + book.ttl), routes=sorted(ROUTES)
    )
    return json_response(body, status=201)
