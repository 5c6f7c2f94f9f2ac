"""Who is calling: the admin API key, a registration key, or a runner's own token.

One place decides; the middleware calls :func:`authenticate` and :func:`authorize` for every request, so the
later roles/JWT work extends this module alone.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web

from coordinator import tokens
from coordinator.config import CoordinatorConfig
from coordinator.dashboard import session as dashboard_session
from shared import ids
from shared.errors import AuthenticationRequired, AuthorizationFailed

Role = Literal["admin", "viewer", "registrar", "runner"]
READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Principal:
    role: Role
    runner_id: str | None = None
    name: str | None = None  # the ``sub`` of a JWT

    @property
    def subject(self) -> str:
        """Who this is, for per-user accounting (rate limits, logs)."""
        if self.role == "runner":
            return f"runner:{self.runner_id}"
        return f"user:{self.name}" if self.name else self.role


@dataclass(frozen=True)
class Credentials:
    api_key: str
    registration_key: str
    jwt_secret: str


def _kept_secret(path: Path, configured: str | None, make: str) -> str:
    """The configured secret, else the one kept in ``path``, else a new one written there (mode 0600)."""
    if configured:
        return configured
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = {"api": ids.new_api_key(), "registration": f"reg_{ids.new_api_key()[3:]}", "jwt": secrets.token_hex(32)}[
        make
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret + "\n")
    return secret


def load_credentials(config: CoordinatorConfig) -> Credentials:
    return Credentials(
        api_key=_kept_secret(config.state_dir / "admin-api-key", config.auth.api_key, "api"),
        registration_key=_kept_secret(
            config.state_dir / "registration-key", config.auth.registration_key, "registration"
        ),
        jwt_secret=_kept_secret(config.state_dir / "jwt-secret", config.auth.jwt_secret, "jwt"),
    )


class TokenCache:
    """Runner tokens by runner id, so agents' frequent calls skip a store read.

    A token never changes for a runner id; only deletion invalidates it. Entries expire after ``ttl``
    seconds, which bounds how long another coordinator's deletion of a runner can go unnoticed here.
    """

    def __init__(self, ttl: float = 30.0) -> None:
        self._ttl = ttl
        self._tokens: dict[str, tuple[str, float]] = {}

    def get(self, runner_id: str) -> str | None:
        entry = self._tokens.get(runner_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, runner_id: str, token: str) -> None:
        if len(self._tokens) > 100_000:
            self._tokens.clear()  # bounded memory; a cold cache only costs store reads
        self._tokens[runner_id] = (token, time.monotonic() + self._ttl)

    def forget(self, runner_id: str) -> None:
        self._tokens.pop(runner_id, None)


def _presented(request: web.Request) -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = request.query.get("token")  # browsers cannot set headers on a WebSocket
    if token and request.path.endswith("/ws"):
        return token
    return None


async def authenticate(
    request: web.Request,
    credentials: Credentials,
    runner_token: Callable[[str], Awaitable[str | None]],
    token_owner: Callable[[str], Awaitable[str | None]],
) -> Principal:
    """Identify the caller. ``runner_token`` gives the token of the runner the path names; ``token_owner``
    finds which runner a token belongs to (so another runner's token is told apart from a wrong one)."""
    presented = _presented(request)
    if presented is None and (from_cookie := dashboard_session.principal(request)) is not None:
        return from_cookie
    if presented is None:
        raise AuthenticationRequired(
            "Authentication required: send the API key in the X-API-Key header or a token as 'Authorization: Bearer'",
            header="X-API-Key",
        )
    if hmac.compare_digest(presented, credentials.api_key):
        return Principal("admin")
    if hmac.compare_digest(presented, credentials.registration_key):
        return Principal("registrar")
    if tokens.looks_like_jwt(presented):
        subject, role = tokens.verify(credentials.jwt_secret, presented)
        return Principal(role, name=subject)
    if presented.startswith(ids.TOKEN_PREFIX):
        runner_id = request.match_info.get("runner_id")
        expected = await runner_token(runner_id) if runner_id else None
        if expected and hmac.compare_digest(presented, expected):
            return Principal("runner", runner_id)
        owner = await token_owner(presented)
        if owner is not None:
            return Principal("runner", owner)
    raise AuthenticationRequired("The API key or token is not valid", header="X-API-Key")


def authorize(request: web.Request, principal: Principal) -> None:
    """Admins may do anything; a registration key may only register; a runner only its own routes."""
    if dashboard_session.open_to_all(request):  # sign-in, sign-out, whoami: the handlers decide
        return
    if principal.role == "admin":
        return
    if principal.role == "viewer":
        if request.method in READ_METHODS:
            return
        raise AuthorizationFailed("A viewer token may only read; this call needs the admin role", method=request.method)
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else ""
    if principal.role == "registrar":
        if route == "/api/runners/register" and request.method == "POST":
            return
        raise AuthorizationFailed("A registration key may only register runners", route=route)
    runner_id = request.match_info.get("runner_id")
    if runner_id is None or runner_id != principal.runner_id:
        raise AuthorizationFailed("A runner token may only be used for its own runner's routes", route=route)
