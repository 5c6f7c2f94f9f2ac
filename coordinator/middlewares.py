"""Request middlewares: request metrics and the access log, the error envelope (from ``shared.http``) and
authentication."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import structlog
from aiohttp import web

from coordinator import auth, keys, ratelimit
from coordinator.dashboard import assets
from shared import logs
from shared.http import error_middleware

access_log = structlog.get_logger("coordinator.access")

# Reachable without credentials: the liveness probe, the API description, the Prometheus scrape, the dashboard's files.
PUBLIC_PATHS = frozenset({"/api/health", "/api/openapi.json", "/metrics"}) | assets.public_paths()


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.match_info.http_exception is not None:
        response: web.StreamResponse = await handler(request)
        return response
    store = request.app[keys.STORE]
    cache = request.app[keys.RUNNER_TOKENS]

    async def runner_token(runner_id: str) -> str | None:
        token = cache.get(runner_id)
        if token is None:
            runner = await store.get_runner(runner_id)
            if runner is None:
                return None
            token = runner.token
            cache.put(runner_id, token)
        return token

    principal = await auth.authenticate(request, request.app[keys.CREDENTIALS], runner_token, store.token_owner)
    auth.authorize(request, principal)
    request[keys.PRINCIPAL] = principal
    response = await handler(request)
    return response


@web.middleware
async def metrics_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count every request by its route template (``/api/runners/{runner_id}``, never the raw path: one series
    per runner id would grow without bound) and time it. Outermost, so it sees the status the client got.

    At log level ``debug`` it also writes the access log: one ``http request`` line per request with the
    method, route template, status, duration and the principal that authenticated (none at ``info``)."""
    started = time.perf_counter()
    status = 500
    streamed = False
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        # A WebSocket session or an SSE stream lasts as long as the client stays: not a request latency.
        streamed = not isinstance(response, web.Response)
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer (nginx's convention)
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        elapsed = time.perf_counter() - started
        request.app[keys.PROMETHEUS].observe_request(route, request.method, status, None if streamed else elapsed)
        if logs.enabled_for(logging.DEBUG):
            principal = request.get(keys.PRINCIPAL)
            access_log.debug(
                "http request",
                method=request.method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                principal=principal.subject if principal is not None else None,
            )


def setup_middlewares(app: web.Application) -> None:
    app.middlewares.append(metrics_middleware)
    app.middlewares.append(error_middleware)
    app.middlewares.append(auth_middleware)
    # After authentication: bulk operations are counted per user.
    app.middlewares.append(ratelimit.rate_limit_middleware)
