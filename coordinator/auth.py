"""Who is calling: an API key (the admin key, the registration key or a named key), a JWT, a runner's own token,
or a single-use ticket.

One place decides who; :mod:`coordinator.access` decides what that principal may do on each route. Every
comparison of a presented secret is constant-time, on bytes (a header that is not ASCII is simply not a match).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from coordinator import fleet_keys, tokens
from coordinator.config import CoordinatorConfig, KeyRole
from shared import ids
from shared.errors import AuthenticationRequired

Role = Literal["admin", "operator", "viewer", "registrar", "runner"]
Kind = Literal["key", "jwt", "runner"]
ROLE_ORDER: tuple[Role, ...] = ("admin", "operator", "viewer", "registrar", "runner")

ADMIN_KEY_NAME = "admin"
REGISTRATION_KEY_NAME = "registration"


@dataclass(frozen=True)
class Principal:
    role: Role
    runner_id: str | None = None
    name: str | None = None
    """The key's name, or the ``sub`` of a JWT."""
    kind: Kind = "key"

    @property
    def subject(self) -> str:
        """Who this is, for per-user accounting (rate limits, audit trail)."""
        if self.role == "runner":
            return f"runner:{self.runner_id}"
        if self.kind == "jwt":
            return f"user:{self.name}"
        return f"key:{self.name}" if self.name else self.role


def encoded(text: str) -> bytes:
    """A header value as the bytes that came over the wire (aiohttp decodes them as UTF-8, surrogateescape)."""
    return text.encode("utf-8", "surrogateescape")


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time equality of two secrets, as bytes (never raises on non-ASCII input)."""
    return hmac.compare_digest(encoded(presented), encoded(expected))


def key_hash(key: str) -> str:
    """The form a named key takes in the config: API keys are random 256-bit strings, so one SHA-256 suffices."""
    return "sha256:" + hashlib.sha256(encoded(key)).hexdigest()


@dataclass(frozen=True)
class NamedKey:
    name: str
    role: KeyRole
    digest: bytes


@dataclass(frozen=True)
class Credentials:
    api_key: str
    registration_key: str
    jwt_secret: str
    named_keys: tuple[NamedKey, ...] = ()
    jwt: tokens.JwtVerifier | None = None


def load_credentials(config: CoordinatorConfig) -> Credentials:
    """The credentials of a coordinator on its own: generated keys kept in its state directory."""
    kept = fleet_keys.StateDirKeys(config.state_dir).kept_now
    auth = config.auth
    return credentials(
        config,
        auth.api_key or kept(fleet_keys.ADMIN_API_KEY),
        auth.registration_key or kept(fleet_keys.REGISTRATION_KEY),
        auth.jwt_secret or kept(fleet_keys.JWT_SECRET),
    )


async def load_shared_credentials(config: CoordinatorConfig, source: fleet_keys.KeySource) -> Credentials:
    """The credentials of a coordinator of a fleet: generated keys from ``source`` (the shared database)."""
    auth = config.auth
    return credentials(
        config,
        auth.api_key or await source.kept(fleet_keys.ADMIN_API_KEY),
        auth.registration_key or await source.kept(fleet_keys.REGISTRATION_KEY),
        auth.jwt_secret or await source.kept(fleet_keys.JWT_SECRET),
    )


def credentials(config: CoordinatorConfig, api_key: str, registration_key: str, jwt_secret: str) -> Credentials:
    return Credentials(
        api_key=api_key,
        registration_key=registration_key,
        jwt_secret=jwt_secret,
        named_keys=tuple(
            NamedKey(key.name, key.role, bytes.fromhex(key.hash.removeprefix("sha256:"))) for key in config.auth.keys
        ),
        jwt=tokens.JwtVerifier(config.auth.jwt, jwt_secret),
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


def presented(request: web.Request) -> str | None:
    """The credential in the headers: ``X-API-Key`` or ``Authorization: Bearer``."""
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _named_key(credentials: Credentials, key: str) -> NamedKey | None:
    digest = hashlib.sha256(encoded(key)).digest()
    found = None
    for named in credentials.named_keys:  # every entry is compared: the time does not tell which matched
        if hmac.compare_digest(digest, named.digest):
            found = named
    return found


async def authenticate(
    request: web.Request,
    credentials: Credentials,
    runner_token: Callable[[str], Awaitable[str | None]],
    token_owner: Callable[[str], Awaitable[str | None]],
    secret: str | None = None,
) -> Principal:
    """Identify the caller by ``secret`` (default: the one in the headers). ``runner_token`` gives the token of
    the runner the path names; ``token_owner`` finds which runner a token belongs to (so another runner's token
    is told apart from a wrong one)."""
    if secret is None:
        secret = presented(request)
    if secret is None:
        raise AuthenticationRequired(
            "Authentication required: send the API key in the X-API-Key header or a token as 'Authorization: Bearer'",
            header="X-API-Key",
        )
    if same_secret(secret, credentials.api_key):
        return Principal("admin", name=ADMIN_KEY_NAME)
    if same_secret(secret, credentials.registration_key):
        return Principal("registrar", name=REGISTRATION_KEY_NAME)
    named = _named_key(credentials, secret)
    if named is not None:
        return Principal(named.role, name=named.name)
    if tokens.looks_like_jwt(secret) and credentials.jwt is not None:
        subject, role = credentials.jwt.verify(secret)
        return Principal(role, name=subject, kind="jwt")
    if secret.startswith(ids.TOKEN_PREFIX) and secret.isascii():  # runner tokens are ASCII
        runner_id = request.match_info.get("runner_id")
        expected = await runner_token(runner_id) if runner_id else None
        if expected and same_secret(secret, expected):
            return Principal("runner", runner_id, kind="runner")
        owner = await token_owner(secret)
        if owner is not None:
            return Principal("runner", owner, kind="runner")
    raise AuthenticationRequired("The API key or token is not valid", header="X-API-Key")
