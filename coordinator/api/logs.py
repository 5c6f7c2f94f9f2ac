"""``GET /runners/{id}/logs``: a runner's log entries, as one page or followed live (Server-Sent Events).

A page holds the most recent ``limit`` matching entries, oldest first; with ``since``, the first ``limit``
from that moment on. ``follow=true`` or ``Accept: text/event-stream`` streams instead: the same backlog (or
everything after ``Last-Event-ID``, or everything from ``since``), then new entries as they are stored.
"""

from __future__ import annotations

from aiohttp import web

from coordinator import keys, sse
from coordinator.api.runners import get_runner_or_404
from coordinator.store.logs import LogFilter
from coordinator.store.schema import LEVELS
from shared.errors import InvalidRequest
from shared.http import json_response, query_bool, query_choice, query_int, query_time
from shared.models import LOG_LEVELS

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


async def get_logs(request: web.Request) -> web.StreamResponse:
    runner = await get_runner_or_404(request)
    where = _filter(request)
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
    if query_bool(request, "follow") or "text/event-stream" in request.headers.get("Accept", ""):
        start = sse.Start(after_seq=_last_event_id(request), tail=limit)
        keepalive = request.app[keys.CONFIG].log_stream.keepalive_interval
        return await sse.follow(request, runner.id, where, start, keepalive)
    store = request.app[keys.LOG_STORE]
    page = await store.page(runner.id, where, limit, oldest_first=where.since is not None)
    return json_response(
        {
            "runner_id": runner.id,
            "logs": [entry.to_wire() for entry in page.entries],
            "total_count": page.total_count,
            "has_more": page.has_more,
        }
    )


def _filter(request: web.Request) -> LogFilter:
    since = query_time(request, "since")
    until = query_time(request, "until")
    if since is not None and until is not None and since > until:
        raise InvalidRequest("Query parameter 'since' must not be later than 'until'", field="since")
    level = query_choice(request, "level", LOG_LEVELS)
    return LogFilter(
        since=since,
        until=until,
        min_level=LEVELS[level] if level else 0,
        job_id=request.query.get("job_id") or None,
        step=request.query.get("step") or None,
    )


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise InvalidRequest(f"Header 'Last-Event-ID' must be a log entry's seq, got {raw!r}", field="Last-Event-ID")
    return int(raw)
