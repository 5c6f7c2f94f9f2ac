"""JWTs for people and tools: ``Authorization: Bearer <jwt>``, signed HS256 with the coordinator's secret.

Claims: ``sub`` (who), ``role`` (``admin``: everything; ``viewer``: read-only), ``iss``, ``iat`` and ``exp``
(required: every token expires). Issue one with ``rustci-coordinator token --subject NAME --role ROLE``.
"""

from __future__ import annotations

import time
from typing import Literal

import jwt

from shared.errors import AuthenticationRequired

ISSUER = "rustci-coordinator"
ALGORITHM = "HS256"
TokenRole = Literal["admin", "viewer"]
ROLES: tuple[str, ...] = ("admin", "viewer")


def issue(secret: str, subject: str, role: TokenRole, ttl_seconds: int) -> str:
    now = int(time.time())
    claims = {"sub": subject, "role": role, "iss": ISSUER, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def verify(secret: str, token: str) -> tuple[str, TokenRole]:
    """The token's subject and role; raises ``AuthenticationRequired`` naming what is wrong."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "role", "iss"]},
        )
    except jwt.ExpiredSignatureError as e:
        raise AuthenticationRequired("The bearer token has expired", header="Authorization") from e
    except jwt.InvalidTokenError as e:
        raise AuthenticationRequired(f"The bearer token is not valid: {e}", header="Authorization") from e
    role = claims.get("role")
    if role not in ROLES:
        raise AuthenticationRequired(
            f"The bearer token's role must be one of {', '.join(ROLES)}", header="Authorization"
        )
    return str(claims["sub"]), role
