"""Rate limits of the public API, as the reference sets them, with the ``X-RateLimit-*`` headers.

- registration: per client IP (``POST /runners/register``; behind a trusted proxy, from ``X-Forwarded-For``)
- status and health: per runner (``GET /runners/{id}/status``, ``GET /runners/{id}/health``)
- job submission: per runner (``POST /runners/{id}/jobs``), and per tag set for jobs submitted to the fleet
  (``POST /jobs``: the sorted set of the body's ``tags``, with the same limit, counted apart from the runners')
- bulk operations: per user (``POST /runners/bulk``; the user is the credential that authenticated)

Fixed one-minute windows aligned to the clock, so ``X-RateLimit-Reset`` (epoch seconds) is the same for every
client of a window. A request past the limit is refused and not counted. Where the counts live is a
:class:`Counters`:

- :class:`MemoryCounters`: one coordinator on its own (SQLite): in memory, the table of keys pruned of past
  windows so it stays bounded.
- :class:`DatabaseCounters`: coordinators sharing a PostgreSQL database count together in its
  ``rate_limit_counters`` table (one UPSERT per request; each coordinator deletes past windows once a window),
  so a client cannot multiply its limit by spreading requests over the coordinators behind a load balancer.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from coordinator import keys, pg
from coordinator.client_address import client_address
from coordinator.config import RateLimits
from shared.errors import ApiError, RateLimitExceeded
from shared.http import error_response

WINDOW = 60.0
MAX_KEYS = 100_000


@dataclass(frozen=True)
class Rule:
    name: str
    limit: int
    key: Callable[[web.Request], str | Awaitable[str]]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


class Counters(Protocol):
    async def count(self, slot: str, window: int, limit: int) -> int:
        """Count one hit of ``slot`` in ``window`` (the window's start, epoch seconds) unless it already has
        ``limit``; return how many it had before (``limit`` when this one was refused)."""
        ...


class MemoryCounters:
    """The counts of one coordinator, in memory."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._max_keys = max_keys
        self._counts: dict[str, tuple[int, int]] = {}  # slot -> (window, hits)

    async def count(self, slot: str, window: int, limit: int) -> int:
        seen_window, hits = self._counts.get(slot, (window, 0))
        if seen_window != window:
            hits = 0
        if hits >= limit:
            return limit
        if len(self._counts) >= self._max_keys:
            self._counts = {key: count for key, count in self._counts.items() if count[0] == window}
        self._counts[slot] = (window, hits + 1)
        return hits


class DatabaseCounters:
    """The counts of a fleet, in the shared database's ``rate_limit_counters``."""

    def __init__(self, connections: pg.Connections) -> None:
        self._connections = connections
        self._pruned = 0

    async def count(self, slot: str, window: int, limit: int) -> int:
        async with self._connections.connection() as conn:
            if window != self._pruned:
                self._pruned = window
                await conn.execute("DELETE FROM rate_limit_counters WHERE window_start < $1", window)
            hits: int | None = await conn.fetchval(
                "INSERT INTO rate_limit_counters (key, window_start, count) VALUES ($1, $2, 1)"
                " ON CONFLICT (key, window_start) DO UPDATE SET count = rate_limit_counters.count + 1"
                " WHERE rate_limit_counters.count < $3 RETURNING count",
                slot,
                window,
                limit,
            )
        return limit if hits is None else hits - 1


class RateLimiter:
    def __init__(
        self, settings: RateLimits, clock: Callable[[], float] = time.time, counters: Counters | None = None
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.counters: Counters = counters or MemoryCounters()
        """Where the counts live; a coordinator of a fleet sets :class:`DatabaseCounters` at startup."""
        self._rules = _rules(settings)

    def configure(self, settings: RateLimits) -> None:
        """New limits (a config reload); the counts of the current window are kept."""
        self.settings = settings
        self._rules = _rules(settings)

    def now(self) -> float:
        return self._clock()

    def rule_for(self, request: web.Request) -> Rule | None:
        resource = request.match_info.route.resource
        if resource is None or not self.settings.enabled:
            return None
        return self._rules.get((request.method, resource.canonical))

    async def hit(self, rule: Rule, key: str) -> Decision:
        window = int(self._clock() // WINDOW)
        reset = math.ceil((window + 1) * WINDOW)
        hits = await self.counters.count(f"{rule.name}:{key}", int(window * WINDOW), rule.limit)
        if hits >= rule.limit:
            return Decision(False, rule.limit, 0, reset)
        return Decision(True, rule.limit, rule.limit - hits - 1, reset)


def _rules(settings: RateLimits) -> dict[tuple[str, str], Rule]:
    return {
        ("POST", "/api/runners/register"): Rule("registration", settings.registration_per_minute, _client_ip),
        ("GET", "/api/runners/{runner_id}/status"): Rule("status", settings.status_per_minute, _runner),
        ("GET", "/api/runners/{runner_id}/health"): Rule("status", settings.status_per_minute, _runner),
        ("POST", "/api/runners/{runner_id}/jobs"): Rule("jobs", settings.job_submission_per_minute, _runner),
        ("POST", "/api/runners/bulk"): Rule("bulk", settings.bulk_per_minute, _user),
        ("POST", "/api/jobs"): Rule("jobs", settings.job_submission_per_minute, _tag_set),
    }


def _client_ip(request: web.Request) -> str:
    return client_address(request)


def _runner(request: web.Request) -> str:
    return request.match_info.get("runner_id", "")


async def _tag_set(request: web.Request) -> str:
    """The body's tag set (the body is read once; the handler reads the same bytes again)."""
    try:
        tags = json.loads(await request.read()).get("tags") or []
        names = sorted({str(tag).strip() for tag in tags})
    except (ValueError, AttributeError, TypeError):
        names = []  # the handler refuses the body; it still counts against the empty tag set
    return "tags:" + ",".join(names)


def _user(request: web.Request) -> str:
    principal = request.get(keys.PRINCIPAL)
    return principal.subject if principal is not None else _client_ip(request)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    limiter = request.app[keys.RATE_LIMITER]
    rule = limiter.rule_for(request)
    if rule is None:
        response: web.StreamResponse = await handler(request)
        return response
    key = rule.key(request)
    decision = await limiter.hit(rule, key if isinstance(key, str) else await key)
    if not decision.allowed:
        retry_after = max(decision.reset - int(limiter.now()), 1)
        error = RateLimitExceeded(
            f"Rate limit of {decision.limit} requests per minute exceeded for {rule.name}; retry after {retry_after}s",
            limit=decision.limit,
            window_seconds=int(WINDOW),
            retry_after=retry_after,
        )
        response = error_response(error)
        response.headers["Retry-After"] = str(retry_after)
    else:
        try:
            response = await handler(request)
        except ApiError as e:
            response = error_response(e)
    response.headers.update(decision.headers())
    return response
