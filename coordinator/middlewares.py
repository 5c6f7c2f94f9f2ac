"""Request middlewares: the error envelope (from ``shared.http``) and authentication."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from coordinator import auth, keys
from shared.http import error_middleware

# Reachable without credentials: the liveness probe, the API description and the Prometheus scrape.
PUBLIC_PATHS = frozenset({"/api/health", "/api/openapi.json", "/metrics"})


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


def setup_middlewares(app: web.Application) -> None:
    app.middlewares.append(error_middleware)
    app.middlewares.append(auth_middleware)
