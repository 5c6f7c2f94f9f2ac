"""Browser sessions: an API key or token, presented once, becomes an HttpOnly cookie.

``POST /api/session`` is authenticated like any API call (``X-API-Key`` or ``Authorization: Bearer``); it
answers with a ``Set-Cookie`` for a random session id (``HttpOnly``, ``SameSite=Strict``, ``Path=/``, no
``Max-Age``: it ends with the browser session) and the session's CSRF token. From then on the browser sends
the cookie by itself, on ``fetch``, the WebSocket and the log stream alike, so no credential is kept by the
page's script or ever put in a URL. ``DELETE /api/session`` signs out.

A request that carries only the cookie is resolved by :func:`principal` (called from ``coordinator.auth``)
to the principal that signed in, with two checks against cross-site request forgery on top of
``SameSite=Strict``:

- an ``Origin`` header, when the browser sends one (always on WebSocket handshakes and on state-changing
  ``fetch`` calls), must name this server;
- a request that may change state (anything but GET/HEAD) must carry ``X-RustCI-CSRF`` with the session's
  CSRF token, which a page on another origin cannot read.

Sessions live in memory, bounded in number and lifetime (``dashboard.session_ttl``, and never past the ``exp``
of the bearer token they were made from); a coordinator restart signs everyone out. Only a digest of the
session id is kept, so lookups compare digests, not secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from coordinator import keys, tokens
from coordinator.config import Dashboard
from shared.errors import AuthenticationRequired, AuthorizationFailed
from shared.http import json_response
from shared.models import Identity, Ok
from shared.timeutil import from_epoch

if TYPE_CHECKING:
    from coordinator.auth import Principal

COOKIE = "rustci_session"
CSRF_HEADER = "X-RustCI-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NO_DASHBOARD_ROLES = frozenset({"registrar", "runner"})
"""Credentials that may not sign in: a registration key and a runner's token are for agents, not people."""


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf_token: str
    expires_at: float
    """Wall-clock epoch seconds."""

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


class SessionTable:
    """The signed-in browsers, by the digest of their session id; at most ``max_sessions``."""

    def __init__(self, settings: Dashboard, clock: Callable[[], float] = time.time) -> None:
        self.ttl = settings.session_ttl
        self.max_sessions = settings.max_sessions
        self._clock = clock
        self._sessions: dict[bytes, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, principal: Principal, not_after: float | None = None) -> tuple[str, Session]:
        """A new session for ``principal``; returns the session id (the cookie's value) and the session."""
        now = self._clock()
        expires = now + self.ttl if not_after is None else min(now + self.ttl, not_after)
        if len(self._sessions) >= self.max_sessions:
            self._purge(now)
        while len(self._sessions) >= self.max_sessions:
            del self._sessions[next(iter(self._sessions))]  # the oldest sign-in goes first
        session_id = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), expires)
        self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str) -> Session | None:
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is not None and session.expired(self._clock()):
            del self._sessions[key]
            return None
        return session

    def delete(self, session_id: str) -> None:
        self._sessions.pop(_digest(session_id), None)

    def _purge(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if s.expired(now)]:
            del self._sessions[key]


# --- resolving a cookie (called by coordinator.auth.authenticate) ----------------------------------------


def principal(request: web.Request) -> Principal | None:
    """The principal of the request's session cookie, or None when it has none; raises when the cookie is
    stale or the request fails the cross-site checks."""
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return None
    session = request.app[keys.DASHBOARD_SESSIONS].get(session_id)
    if session is None:
        raise AuthenticationRequired(
            "The dashboard session has expired or was signed out; sign in again", cookie=COOKIE
        )
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(request, origin):
        raise AuthorizationFailed("A dashboard session may only be used from the dashboard's own origin", origin=origin)
    if request.method not in SAFE_METHODS:
        presented = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(presented.encode(), session.csrf_token.encode()):
            raise AuthorizationFailed(
                f"A change made with a dashboard session needs the {CSRF_HEADER} header of that session",
                header=CSRF_HEADER,
            )
    request[keys.DASHBOARD_SESSION] = session
    return session.principal


def _same_origin(request: web.Request, origin: str) -> bool:
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()


# --- handlers -----------------------------------------------------------------------------------------------


def _token_expiry(request: web.Request) -> float | None:
    """The ``exp`` of the bearer JWT that authenticated this request (already verified), if it was one."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    if request.headers.get("X-API-Key") or scheme.lower() != "bearer" or not tokens.looks_like_jwt(value):
        return None  # an API key authenticated (it takes precedence), or no token at all
    import jwt

    try:
        claims = jwt.decode(value, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) else None


def _identity(session: Session) -> Identity:
    return Identity(
        role=session.principal.role,
        subject=session.principal.subject,
        csrf_token=session.csrf_token,
        expires_at=from_epoch(session.expires_at),
    )


async def sign_in(request: web.Request) -> web.Response:
    """``POST /api/session``: the credential in the request's headers becomes a session cookie."""
    who = request[keys.PRINCIPAL]
    if who.role in NO_DASHBOARD_ROLES:
        raise AuthorizationFailed(f"A {who.role} credential cannot sign in to the dashboard", role=who.role)
    table = request.app[keys.DASHBOARD_SESSIONS]
    old = request.cookies.get(COOKIE)
    if old:
        table.delete(old)
    session_id, session = table.create(who, _token_expiry(request))
    response = json_response(_identity(session), status=201)
    response.set_cookie(COOKIE, session_id, path="/", httponly=True, samesite="Strict", secure=request.secure or None)
    return response


async def sign_out(request: web.Request) -> web.Response:
    """``DELETE /api/session``: forget the session (if the request had one) and clear the cookie."""
    session_id = request.cookies.get(COOKIE)
    if session_id:
        request.app[keys.DASHBOARD_SESSIONS].delete(session_id)
    response = json_response(Ok(message="Signed out"))
    response.del_cookie(COOKIE, path="/", samesite="Strict", httponly=True)
    return response


async def whoami(request: web.Request) -> web.Response:
    """``GET /api/whoami``: the caller's role and subject (and, for a dashboard session, its CSRF token)."""
    session = request.get(keys.DASHBOARD_SESSION)
    if session is not None:
        return json_response(_identity(session))
    who = request[keys.PRINCIPAL]
    return json_response(Identity(role=who.role, subject=who.subject))
