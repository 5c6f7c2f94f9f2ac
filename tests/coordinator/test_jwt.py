"""Bearer JWTs: issued by ``rustci-coordinator token``, admin may do anything, viewer only read."""

from __future__ import annotations

import asyncio
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


def _token_command(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator",
            "token",
            "--subject",
            "ci-bot",
            "--role",
            "viewer",
            "--ttl",
            "120",
            *extra,
        ],
        cwd=REPO,
        env={"RUSTCI_STATE_DIR": str(state), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_token_command_signs_with_the_running_coordinators_secret(
    coordinator: CoordinatorHandle, tmp_path: Path
) -> None:
    # The same state directory as the coordinator: the token is one it accepts.
    done = await asyncio.to_thread(_token_command, coordinator.config.state_dir)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    secret = (coordinator.config.state_dir / "jwt-secret").read_text().strip()
    assert tokens.JwtVerifier(Jwt(), secret).verify(token) == ("ci-bot", "viewer")
    status, _ = await coordinator.client(None).get("/runners", headers={"Authorization": f"Bearer {token}"})
    assert status == 200
    # The state directory can come from the config file, as it does for the daemon.
    config = tmp_path / "coordinator.yaml"
    config.write_text(f"state_dir: {coordinator.config.state_dir}\n")
    from_file = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "coordinator", "-c", str(config), "token", "--subject", "x"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert from_file.returncode == 0, from_file.stderr
    assert tokens.JwtVerifier(Jwt(), secret).verify(from_file.stdout.strip())[0] == "x"


def test_token_command_refuses_to_create_keys(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere"
    done = _token_command(missing)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no coordinator state directory at" in done.stderr
    assert not missing.exists()
    # A directory that is not a coordinator's state: nothing is written into it either.
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _token_command(empty)
    assert done.returncode == 1 and "jwt-secret does not exist" in done.stderr and "no key was created" in done.stderr
    assert list(empty.iterdir()) == []
