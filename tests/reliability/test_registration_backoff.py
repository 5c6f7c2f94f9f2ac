"""Registration waits out a rate limit, an overloaded or failing coordinator; only a refused key is fatal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from agent import executors
from agent.coordinator_client import CoordinatorClient
from agent.registration import RegistrationRefused, ensure_registered
from shared.errors import AuthenticationRequired, InternalError, RateLimitExceeded, RunnerUnavailable
from shared.http import error_response, json_response
from tests.conftest import agent_config
from tests.helpers import free_port

Answer = Callable[[web.Request], web.StreamResponse]


class _Scripted:
    """A coordinator stand-in on loopback whose register route answers from a script, then succeeds."""

    def __init__(self, script: list[Answer]) -> None:
        self.script = script
        self.calls: list[float] = []

    async def register(self, request: web.Request) -> web.StreamResponse:
        self.calls.append(time.monotonic())
        if self.script:
            return self.script.pop(0)(request)
        return json_response(
            {"success": True, "runner_id": "runner_1", "registration_token": "reg_token_x", "message": "ok"}, 201
        )


def _rate_limited(request: web.Request) -> web.StreamResponse:
    response = error_response(RateLimitExceeded("slow down"))
    response.headers["Retry-After"] = "1"
    return response


def _overloaded(request: web.Request) -> web.StreamResponse:
    return error_response(RunnerUnavailable("overloaded"))


def _broken(request: web.Request) -> web.StreamResponse:
    return error_response(InternalError("boom"))


def _proxy_page(request: web.Request) -> web.StreamResponse:
    return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")


def _refused(request: web.Request) -> web.StreamResponse:
    return error_response(AuthenticationRequired("Invalid registration key"))


async def _register(tmp_path: Path, fake: _Scripted) -> tuple[str, list[float]]:
    app = web.Application()
    app.router.add_post("/api/runners/register", fake.register)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = CoordinatorClient(f"http://127.0.0.1:{port}", 5)
    await client.start()
    try:
        config = agent_config(tmp_path / "agent", f"http://127.0.0.1:{port}")
        identity = await ensure_registered(config, executors.create(config), client, 9999)
        return identity.runner_id, fake.calls
    finally:
        await client.close()
        await runner.cleanup()


async def test_registration_waits_as_retry_after_says_then_rides_out_5xx_and_registers(tmp_path: Path) -> None:
    fake = _Scripted([_rate_limited, _overloaded, _broken, _proxy_page])
    runner_id, calls = await _register(tmp_path, fake)
    assert runner_id == "runner_1"
    assert len(calls) == 5
    assert calls[1] - calls[0] >= 0.95, "the 429's Retry-After: 1 was not waited out"


async def test_registration_keeps_trying_while_the_coordinator_is_not_listening(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: every attempt is refused
    client = CoordinatorClient(url, 1)
    await client.start()
    try:
        config = agent_config(tmp_path / "agent", url)
        task = asyncio.create_task(ensure_registered(config, executors.create(config), client, 9999))
        done, _ = await asyncio.wait([task], timeout=1.0)
        assert not done, f"registration gave up while the coordinator was unreachable: {task}"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await client.close()


async def test_a_refused_registration_key_is_fatal_at_once(tmp_path: Path) -> None:
    fake = _Scripted([_refused])
    with pytest.raises(RegistrationRefused, match="refused the registration key"):
        await _register(tmp_path, fake)
    assert len(fake.calls) == 1
