"""The dashboard's server side over plain HTTP: the session cookie, its CSRF and origin checks, whoami, the
WebSocket and the log stream with the cookie, the security headers of the page and its files."""

from __future__ import annotations

import time
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest

from coordinator import keys, tokens
from coordinator.config import Dashboard
from coordinator.dashboard import assets
from coordinator.dashboard.session import COOKIE, SessionTable
from tests.conftest import API_KEY, REGISTRATION_KEY, CoordinatorHandle, StartAgent
from tests.helpers import assert_error, registration


async def sign_in(coordinator: CoordinatorHandle, **headers: str) -> tuple[str, dict[str, Any]]:
    """Signs in with ``headers`` (default: the admin key); returns the cookie header value and the answer."""
    async with aiohttp.ClientSession() as http:
        sent = headers or {"X-API-Key": API_KEY}
        async with http.post(f"{coordinator.api_url}/session", headers=sent) as r:
            assert r.status == 201, await r.text()
            morsel = SimpleCookie(r.headers["Set-Cookie"])[COOKIE]
            return f"{COOKIE}={morsel.value}", await r.json()


async def test_sign_in_sets_a_strict_httponly_browser_session_cookie(coordinator: CoordinatorHandle) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{coordinator.api_url}/session", headers={"X-API-Key": API_KEY}) as r:
            assert r.status == 201
            body = await r.json()
            raw = r.headers["Set-Cookie"]
    morsel = SimpleCookie(raw)[COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert not morsel["max-age"] and not morsel["expires"]  # gone when the browser session ends
    assert len(morsel.value) >= 40 and API_KEY not in raw
    assert body["role"] == "admin" and body["subject"] == "key:admin" and len(body["csrf_token"]) >= 40


async def test_the_cookie_reads_and_changes_only_with_the_csrf_token(coordinator: CoordinatorHandle) -> None:
    cookie, session = await sign_in(coordinator)
    api = coordinator.client(None)
    status, body = await api.get("/runners", headers={"Cookie": cookie})
    assert status == 200 and body["total_count"] == 0
    status, who = await api.get("/whoami", headers={"Cookie": cookie})
    assert status == 200 and who["role"] == "admin" and who["csrf_token"] == session["csrf_token"]

    for refused_headers in ({}, {"X-RustCI-CSRF": "not-the-token"}):
        status, body = await api.post(
            "/runners/register", registration(), headers={"Cookie": cookie, **refused_headers}
        )
        assert_error(status, body, 403, "AUTHORIZATION_FAILED")
        assert "X-RustCI-CSRF" in body["error"]["message"]
    status, body = await api.post(
        "/runners/register", registration(), headers={"Cookie": cookie, "X-RustCI-CSRF": session["csrf_token"]}
    )
    assert status == 201, body

    # A page on another origin gets nothing with it, not even a read; the dashboard's own origin does.
    foreign = {"Cookie": cookie, "Origin": "http://evil.example", "X-RustCI-CSRF": session["csrf_token"]}
    status, body = await api.get("/runners", headers=foreign)
    assert_error(status, body, 403, "AUTHORIZATION_FAILED")
    status, _ = await api.get("/runners", headers={"Cookie": cookie, "Origin": coordinator.url})
    assert status == 200


async def test_sign_out_ends_the_session(coordinator: CoordinatorHandle) -> None:
    cookie, session = await sign_in(coordinator)
    api = coordinator.client(None)
    status, body = await api.delete("/session", headers={"Cookie": cookie})
    assert_error(status, body, 403, "AUTHORIZATION_FAILED")  # signing someone out is a change too
    async with aiohttp.ClientSession() as http:
        headers = {"Cookie": cookie, "X-RustCI-CSRF": session["csrf_token"]}
        async with http.delete(f"{coordinator.api_url}/session", headers=headers) as r:
            assert r.status == 200
            assert SimpleCookie(r.headers["Set-Cookie"])[COOKIE].value == ""
    status, body = await api.get("/runners", headers={"Cookie": cookie})
    error = assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")
    assert "sign in again" in error["message"]


async def test_api_auth_is_unchanged_without_a_session(coordinator: CoordinatorHandle) -> None:
    api = coordinator.client(None)
    status, body = await api.get("/runners")
    assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")
    status, body = await api.get("/runners", headers={"Cookie": f"{COOKIE}=made-up"})
    assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")
    status, who = await coordinator.api.get("/whoami")
    assert status == 200 and who == {"role": "admin", "subject": "key:admin", "csrf_token": None, "expires_at": None}


async def test_whoami_and_sessions_for_each_kind_of_credential(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    secret = (coordinator.config.state_dir / "jwt-secret").read_text().strip()
    viewer = tokens.issue(secret, "vera", "viewer", 120)
    cookie, session = await sign_in(coordinator, Authorization=f"Bearer {viewer}")
    assert session["role"] == "viewer" and session["subject"] == "user:vera"
    # The session ends no later than the token it was made from.
    expires = time.mktime(time.strptime(session["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert expires <= time.time() + 121
    api = coordinator.client(None)
    status, body = await api.post(
        "/runners/register", registration(), headers={"Cookie": cookie, "X-RustCI-CSRF": session["csrf_token"]}
    )
    assert_error(status, body, 403, "AUTHORIZATION_FAILED")  # a viewer's session is a viewer

    status, body = await api.post("/session", headers={"X-API-Key": REGISTRATION_KEY})
    assert_error(status, body, 403, "AUTHORIZATION_FAILED")
    agent = await start_agent()
    status, body = await api.post("/session", headers={"Authorization": f"Bearer {agent.identity().token}"})
    assert_error(status, body, 403, "AUTHORIZATION_FAILED")
    status, body = await api.post("/session", headers={"X-API-Key": "rk_wrong-key-0123456789abcdef"})
    assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")


async def test_websocket_and_log_stream_authenticate_with_the_cookie(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    await start_agent()
    _, listed = await coordinator.api.get("/runners")
    runner_id = listed["runners"][0]["id"]
    cookie, _ = await sign_in(coordinator)
    ws_url = coordinator.url.replace("http", "ws") + "/api/runners/ws"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url, headers={"Cookie": cookie, "Origin": coordinator.url}) as ws:
            status, _ = await coordinator.api.post(f"/runners/{runner_id}/stop", {})
            assert status == 200
            event = await ws.receive_json(timeout=10)
            assert event["type"] == "runner_status_change" and event["runner_id"] == runner_id
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url, headers={"Cookie": cookie, "Origin": "http://evil.example"})
        assert refused.value.status == 403
        logs = f"{coordinator.api_url}/runners/{runner_id}/logs?follow=true"
        async with http.get(logs, headers={"Cookie": cookie, "Last-Event-ID": "0"}) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")


async def test_page_and_files_carry_security_headers(coordinator: CoordinatorHandle) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(coordinator.url + "/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
            csp = r.headers["Content-Security-Policy"]
            etag = r.headers["ETag"]
        assert "<script>" not in page and " on" not in page.split("<body>")[1].split(">")[0]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
        assert directives["default-src"] == "'none'" and "unsafe" not in csp
        async with http.get(coordinator.url + "/", headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        for name in assets.assets():
            async with http.get(coordinator.url + assets.PREFIX + name) as r:
                assert r.status == 200, name
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["Content-Security-Policy"] == csp
                if name.endswith(".js"):
                    assert r.content_type == "text/javascript"
        async with http.get(coordinator.url + "/api/runners") as r:
            assert r.status == 401  # the page is public, the API is not


def test_sessions_expire_and_are_bounded() -> None:
    now = [1000.0]
    table = SessionTable(Dashboard(session_ttl=60, max_sessions=2), clock=lambda: now[0])
    first, _ = table.create("alice")  # type: ignore[arg-type]
    second, session = table.create("bob", not_after=1030)  # type: ignore[arg-type]
    assert session.expires_at == 1030  # capped by the token's expiry
    third, _ = table.create("carol")  # type: ignore[arg-type]
    assert table.get(first) is None and len(table) == 2  # the oldest was signed out
    now[0] = 1031
    assert table.get(second) is None and table.get(third) is not None
    now[0] = 1061
    assert table.get(third) is None and len(table) == 0


async def test_the_session_table_is_per_coordinator_and_forgets_on_restart(coordinator: CoordinatorHandle) -> None:
    cookie, _ = await sign_in(coordinator)
    assert coordinator.app is not None and len(coordinator.app[keys.DASHBOARD_SESSIONS]) == 1
    await coordinator.restart()
    status, body = await coordinator.client(None).get("/runners", headers={"Cookie": cookie})
    assert_error(status, body, 401, "AUTHENTICATION_REQUIRED")


async def test_a_stray_bearer_header_beside_the_api_key_is_no_error(coordinator: CoordinatorHandle) -> None:
    _, session = await sign_in(coordinator, **{"X-API-Key": API_KEY, "Authorization": "Bearer eyJx.not-a.jwt"})
    assert session["role"] == "admin"
