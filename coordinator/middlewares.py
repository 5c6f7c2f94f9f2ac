"""Request middlewares: request metrics and the access log, the error envelope (from ``shared.http``) and
authentication."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import structlog
from aiohttp import web

from coordinator import access, audit, auth, keys, ratelimit, tickets
from coordinator.client_address import client_address
from coordinator.dashboard import assets
from coordinator.dashboard import session as dashboard_session
from shared import logs
from shared.errors import ApiError, AuthenticationRequired
from shared.http import error_middleware

access_log = structlog.get_logger("coordinator.access")

AGENT_CREDENTIALS = frozenset({"runner", "registrar"})
"""Roles whose calls need a client certificate when ``tls.client_ca_file`` is set (mutual TLS for agents)."""

DASHBOARD_FILES = assets.public_paths()
"""The dashboard's page and files: reachable without credentials (the page signs in through the API)."""


async def _identify(request: web.Request, route: str) -> auth.Principal:
    """The caller, from a header credential or a single-use ticket; a long-lived credential in the URL is refused."""
    in_url = request.query.get("token")
    if in_url is not None and not tickets.looks_like_ticket(in_url):
        raise AuthenticationRequired(
            "Credentials are not accepted in the URL (?token=): URLs end up in logs and browser histories. Send "
            "X-API-Key or 'Authorization: Bearer', or get a single-use ticket from POST /api/tickets and pass "
            "?ticket=",
            parameter="token",
        )
    ticket = request.query.get("ticket") or in_url
    if ticket:
        if request.method not in ("GET", "HEAD") or route not in tickets.ROUTES:
            raise AuthenticationRequired(
                f"A ticket is accepted only to open a stream: {', '.join(sorted(tickets.ROUTES))}", parameter="ticket"
            )
        principal = request.app[keys.TICKETS].redeem(ticket)
        if principal is None:
            raise AuthenticationRequired(
                "The ticket is unknown, already used or expired: get a new one from POST /api/tickets",
                parameter="ticket",
            )
        return principal
    if auth.presented(request) is None and (from_cookie := dashboard_session.principal(request)) is not None:
        return from_cookie  # a dashboard session: the browser sends the cookie, never the credential
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

    return await auth.authenticate(request, request.app[keys.CREDENTIALS], runner_token, store.token_owner)


def _check_client_certificate(request: web.Request, principal: auth.Principal) -> None:
    if principal.role not in AGENT_CREDENTIALS or request.app[keys.CONFIG].tls.client_ca_file is None:
        return
    transport = request.transport
    if not (transport.get_extra_info("peercert") if transport is not None else None):
        raise AuthenticationRequired(
            "This credential is accepted only over mutual TLS: present a client certificate signed by the CA in "
            "the coordinator's tls.client_ca_file",
            credential=principal.role,
        )


def _record(request: web.Request, action: str, principal: auth.Principal | None, status: int) -> None:
    request.app[keys.AUDIT].record(
        audit.Record(
            ts=time.time(),
            principal=principal.subject if principal is not None else "anonymous",
            role=principal.role if principal is not None else None,
            client=client_address(request),
            action=action,
            method=request.method,
            path=request.path,
            runner_id=request.match_info.get("runner_id"),
            job_id=request.match_info.get("job_id"),
            status=status,
            detail=request.get(audit.DETAIL),
        )
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Authenticate, authorize against :data:`coordinator.access.ROUTES`, and keep the audit trail."""
    route = access.route_of(request)
    if (
        request.match_info.http_exception is not None
        or access.policy_for(request.method, route) is access.PUBLIC
        or request.path in DASHBOARD_FILES
    ):
        response: web.StreamResponse = await handler(request)
        return response
    action = audit.ACTIONS.get((request.method, route))
    principal: auth.Principal | None = None
    status = 500
    try:
        principal = await _identify(request, route)
        _check_client_certificate(request, principal)
        access.authorize(request, principal)
        request[keys.PRINCIPAL] = principal
        if principal.role != "runner" and request.app[keys.AUDIT].first_use(principal.subject):
            _record(request, audit.FIRST_USE, principal, 200)
        response = await handler(request)
        status = response.status
        return response
    except (ApiError, web.HTTPException) as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = 499
        raise
    finally:
        if action is not None:
            _record(request, action, principal, status)


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
