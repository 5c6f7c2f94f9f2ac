"""Bearer JWTs: every way a token can be wrong is refused with 401; RS256/ES256 with a configured public key;
``iss``/``aud`` verified when configured; the role read from a configurable claim."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from coordinator import tokens
from coordinator.config import Jwt
from shared.config import ConfigError
from tests.conftest import CoordinatorHandle, coordinator_config, running_coordinator
from tests.helpers import assert_error

ISSUER = "https://id.rustci.test"
AUDIENCE = "rustci-api"
SECRET = "s" * 48


def _pem_public(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "realm_access": {"roles": ["offline_access", "viewer", "operator"]},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def _status(coord: CoordinatorHandle, token: str, method: str = "GET", path: str = "/runners") -> tuple[int, Any]:
    return await coord.client(None).request(method, path, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
async def idp_coordinator(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[CoordinatorHandle]:
    """A coordinator that trusts an identity provider's RS256 key, with issuer, audience and a nested role claim."""
    public = tmp_path / "idp.pem"
    public.write_bytes(_pem_public(rsa_key))
    jwt_settings = {
        "public_key_file": str(public),
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "role_claim": "realm_access.roles",
    }
    config = coordinator_config(tmp_path / "c", auth={"jwt_secret": SECRET, "jwt": jwt_settings})
    async with running_coordinator(config) as handle:
        yield handle


async def test_an_identity_providers_rs256_token_with_a_nested_role_claim(
    idp_coordinator: CoordinatorHandle, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(_claims(), rsa_key, algorithm="RS256")
    status, body = await _status(idp_coordinator, token)
    assert status == 200, body
    # The strongest role listed wins: operator may submit, not delete.
    status, body = await _status(idp_coordinator, token, "DELETE", "/runners/runner_x")
    assert_error(status, body, 403, "AUTHORIZATION_FAILED", role="operator")


async def test_every_bad_token_is_a_401(
    idp_coordinator: CoordinatorHandle, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    now = int(time.time())
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = _pem_public(rsa_key)
    cases = {
        "expired": jwt.encode(_claims(iat=now - 600, exp=now - 300), rsa_key, "RS256"),
        "not yet valid (nbf)": jwt.encode(_claims(nbf=now + 600), rsa_key, "RS256"),
        "issued in the future": jwt.encode(_claims(iat=now + 600), rsa_key, "RS256"),
        "forged (another key)": jwt.encode(_claims(), other_rsa, "RS256"),
        "tampered payload": _tampered(jwt.encode(_claims(), rsa_key, "RS256")),
        "wrong audience": jwt.encode(_claims(aud="another-api"), rsa_key, "RS256"),
        "no audience": jwt.encode(_claims(aud=None), rsa_key, "RS256"),
        "wrong issuer": jwt.encode(_claims(iss="https://evil.test"), rsa_key, "RS256"),
        "no expiry": jwt.encode(_claims(exp=None), rsa_key, "RS256"),
        "no role": jwt.encode(_claims(realm_access={"roles": ["offline_access"]}), rsa_key, "RS256"),
        "alg none": jwt.encode(_claims(), None, "none"),
        "HS256 signed with the public key": _hs256_with(public_pem, _claims()),
        "ES256 without an EC key configured": jwt.encode(_claims(), ec_key, "ES256"),
    }
    for name, token in cases.items():
        status, body = await _status(idp_coordinator, token)
        error = assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")
        assert "token" in error["message"], (name, error)


def _tampered(token: str) -> str:
    import base64
    import json

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["realm_access"] = {"roles": ["admin"]}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _hs256_with(key: bytes, claims: dict[str, Any]) -> str:
    """The algorithm-confusion attack: an HMAC token keyed with the (public) RSA key."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


async def test_es256_with_a_configured_ec_key(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    public = tmp_path / "ec.pem"
    public.write_bytes(_pem_public(ec_key))
    config = coordinator_config(
        tmp_path / "c", auth={"jwt_secret": SECRET, "jwt": {"public_key_file": str(public), "algorithms": ["ES256"]}}
    )
    async with running_coordinator(config) as coord:
        now = int(time.time())
        good = jwt.encode(
            {"sub": "ci", "role": "viewer", "iss": tokens.ISSUER, "iat": now, "exp": now + 60}, ec_key, "ES256"
        )
        assert (await _status(coord, good))[0] == 200
        # HS256 is switched off by "algorithms": even a token signed with the right secret is refused.
        hs = tokens.issue(SECRET, "ci", "admin", 60)
        assert_error(*await _status(coord, hs), 401, "AUTHENTICATION_REQUIRED")


async def test_hs256_tokens_of_the_token_command_keep_working(tmp_path: Path) -> None:
    """The spec's bearer example: a coordinator-issued HS256 token, issuer checked, audience when configured."""
    config = coordinator_config(tmp_path / "c", auth={"jwt_secret": SECRET, "jwt": {"audience": AUDIENCE}})
    async with running_coordinator(config) as coord:
        assert (await _status(coord, tokens.issue(SECRET, "bob", "viewer", 60, audience=AUDIENCE)))[0] == 200
        assert_error(*await _status(coord, tokens.issue(SECRET, "bob", "viewer", 60)), 401, "AUTHENTICATION_REQUIRED")
        assert_error(
            *await _status(coord, tokens.issue(SECRET, "bob", "viewer", 60, audience=AUDIENCE, issuer="elsewhere")),
            401,
            "AUTHENTICATION_REQUIRED",
        )


def test_a_public_key_that_is_not_one_is_a_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a key")
    with pytest.raises(ConfigError, match=r"bogus\.pem"):
        tokens.JwtVerifier(Jwt(public_key_file=bogus, algorithms=["RS256"]), SECRET)
