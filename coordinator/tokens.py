"""JWTs for people and tools: ``Authorization: Bearer <jwt>``.

Signed HS256 with the coordinator's secret (``rustci-coordinator token`` issues these), or RS256/ES256 by an
identity provider whose public key is configured (``auth.jwt.public_key_file``). Required claims: ``sub`` (who),
``exp`` (every token expires) and the role claim (``auth.jwt.role_claim``, default ``role``); ``iss`` and
``aud`` are verified when ``auth.jwt.issuer`` / ``auth.jwt.audience`` are set; ``nbf`` and ``iat`` when present.
The key is chosen by the token's ``alg`` among the configured algorithms only, so ``alg: none`` and an HMAC
token "signed" with the public key are refused. PyJWT (which loads ``cryptography``) is imported when a JWT is
first issued or verified, or a public key configured, not by every coordinator at start.
"""

from __future__ import annotations

import time
from typing import Any

from coordinator.config import KEY_ROLES, Jwt, KeyRole
from shared.config import ConfigError
from shared.errors import AuthenticationRequired

ISSUER = "rustci-coordinator"
ROLES: tuple[str, ...] = KEY_ROLES
LEEWAY_SECONDS = 30
"""Clock skew tolerated on ``exp``, ``nbf`` and ``iat``."""


def issue(
    secret: str,
    subject: str,
    role: KeyRole,
    ttl_seconds: int,
    *,
    issuer: str | None = ISSUER,
    audience: str | None = None,
    role_claim: str = "role",
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + ttl_seconds}
    _put_claim(claims, role_claim, role)
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    import jwt

    return jwt.encode(claims, secret, algorithm="HS256")


def looks_like_jwt(token: str) -> bool:
    return token.isascii() and token.count(".") == 2 and token.startswith("eyJ")


def _put_claim(claims: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = claims
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _claim(claims: dict[str, Any], path: str) -> Any:
    node: Any = claims
    for key in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _refused(message: str) -> AuthenticationRequired:
    return AuthenticationRequired(message, header="Authorization")


class JwtVerifier:
    """Verifies bearer JWTs as ``auth.jwt`` says; :meth:`verify` gives ``(subject, role)``."""

    def __init__(self, settings: Jwt, secret: str) -> None:
        self.settings = settings
        self._keys: dict[str, Any] = {}
        if "HS256" in settings.algorithms:
            self._keys["HS256"] = secret
        if settings.public_key_file is not None:
            import jwt

            try:
                pem = settings.public_key_file.read_bytes()
            except OSError as e:
                raise ConfigError(f"config error: cannot read auth.jwt.public_key_file: {e}") from e
            for algorithm in ("RS256", "ES256"):
                if algorithm in settings.algorithms:
                    try:
                        self._keys[algorithm] = jwt.get_algorithm_by_name(algorithm).prepare_key(pem)
                    except (ValueError, TypeError, jwt.InvalidKeyError):
                        continue  # an RSA key serves RS256 only, an EC key ES256 only
            if not set(self._keys) & {"RS256", "ES256"}:
                raise ConfigError(
                    f"config error: auth.jwt.public_key_file {settings.public_key_file} is not an RSA or EC public "
                    "key in PEM form (or its algorithm is not in auth.jwt.algorithms)"
                )

    def verify(self, token: str) -> tuple[str, KeyRole]:
        """The token's subject and role; raises ``AuthenticationRequired`` naming what is wrong."""
        import jwt

        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as e:
            raise _refused(f"The bearer token is not valid: {e}") from e
        key = self._keys.get(algorithm) if isinstance(algorithm, str) else None
        if key is None or not isinstance(algorithm, str):
            accepted = ", ".join(sorted(self._keys))
            raise _refused(f"The bearer token's algorithm {algorithm!r} is not accepted here (accepted: {accepted})")
        required = [
            "exp",
            "sub",
            *(["iss"] if self.settings.issuer else []),
            *(["aud"] if self.settings.audience else []),
        ]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                issuer=self.settings.issuer,
                audience=self.settings.audience,
                leeway=LEEWAY_SECONDS,
                options={"require": required, "verify_aud": self.settings.audience is not None},
            )
        except jwt.ExpiredSignatureError as e:
            raise _refused("The bearer token has expired") from e
        except jwt.ImmatureSignatureError as e:
            raise _refused("The bearer token is not valid yet (nbf or iat in the future)") from e
        except jwt.InvalidTokenError as e:
            raise _refused(f"The bearer token is not valid: {e}") from e
        role = self._role(_claim(claims, self.settings.role_claim))
        if role is None:
            raise _refused(f"The bearer token's '{self.settings.role_claim}' claim must name one of {', '.join(ROLES)}")
        return str(claims["sub"]), role

    @staticmethod
    def _role(value: Any) -> KeyRole | None:
        """A role claim may be one role or a list of them (identity providers send lists): the strongest wins."""
        named = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for role in KEY_ROLES:  # strongest first
            if role in named:
                return role
        return None
