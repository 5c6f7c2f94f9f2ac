"""Bearer JWTs: issued by ``rustci-coordinator token``, admin may do anything, viewer only read."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import jwt

from coordinator import tokens
from coordinator.config import Jwt
from tests.conftest import CoordinatorHandle
from tests.helpers import REPO, assert_error, registration


def _secret(coordinator: CoordinatorHandle) -> str:
    return (coordinator.config.state_dir / "jwt-secret").read_text().strip()


async def test_admin_and_viewer_tokens(coordinator: CoordinatorHandle) -> None:
    secret = _secret(coordinator)
    admin = coordinator.client(None)
    admin_headers = {"Authorization": f"Bearer {tokens.issue(secret, 'alice', 'admin', 60)}"}
    status, body = await admin.post("/runners/register", registration(name="by-jwt"), headers=admin_headers)
    assert status == 201, body
    viewer_headers = {"Authorization": f"Bearer {tokens.issue(secret, 'bob', 'viewer', 60)}"}
    status, body = await admin.get("/runners", headers=viewer_headers)
    assert status == 200 and body["total_count"] == 1
    status, body = await admin.get(f"/runners/{body['runners'][0]['id']}", headers=viewer_headers)
    assert status == 200
    for method, path in [("POST", "/runners/register"), ("DELETE", f"/runners/{body['id']}")]:
        status, refused = await admin.request(method, path, json=registration(name="x"), headers=viewer_headers)
        assert_error(status, refused, 403, "AUTHORIZATION_FAILED")
    _, listed = await coordinator.api.get("/runners")
    assert listed["total_count"] == 1  # the viewer changed nothing


async def test_bad_tokens_are_refused(coordinator: CoordinatorHandle) -> None:
    secret = _secret(coordinator)
    client = coordinator.client(None)
    now = int(time.time())
    cases = {
        "expired": jwt.encode(
            {"sub": "a", "role": "admin", "iss": tokens.ISSUER, "iat": now - 120, "exp": now - 60}, secret, "HS256"
        ),
        "wrong-secret": tokens.issue("x" * 64, "a", "admin", 60),
        "no-expiry": jwt.encode({"sub": "a", "role": "admin", "iss": tokens.ISSUER, "iat": now}, secret, "HS256"),
        "unknown-role": jwt.encode(
            {"sub": "a", "role": "root", "iss": tokens.ISSUER, "iat": now, "exp": now + 60}, secret, "HS256"
        ),
        "alg-none": jwt.encode(
            {"sub": "a", "role": "admin", "iss": tokens.ISSUER, "iat": now, "exp": now + 60}, None, "none"
        ),
    }
    for name, token in cases.items():
        status, body = await client.get("/runners", headers={"Authorization": f"Bearer {token}"})
        error = assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")
        assert "token" in error["message"], name


def test_token_command_prints_a_verifiable_token(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", "token", "--subject", "ci-bot", "--role", "viewer", "--ttl", "120"],
        cwd=REPO,
        env={"RUSTCI_STATE_DIR": str(state), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = done.stdout.strip()
    secret = (state / "jwt-secret").read_text().strip()
    assert tokens.JwtVerifier(Jwt(), secret).verify(token) == ("ci-bot", "viewer")
    assert (state / "jwt-secret").stat().st_mode & 0o777 == 0o600
