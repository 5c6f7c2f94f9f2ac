"""What aiohttp itself answers (requests it cannot parse) is the envelope; idle and slow connections end."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.conftest import CoordinatorHandle, StartAgent, coordinator_config, running_coordinator

SECRET = "s3cr3t-bytes-from-the-client"


async def _raw(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()  # until the server closes
    finally:
        writer.close()
        await writer.wait_closed()


def _envelope(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head.lower(), head
    return status, json.loads(body)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /api/runners?q=" + SECRET.encode() * 400 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + SECRET.encode() * 400 + b"\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nHost: x\r\nBad Header " + SECRET.encode() + b"\r\n\r\n",
        b"\x16\x03\x01" + SECRET.encode() + b"\r\n\r\n",
    ],
    ids=["url-over-8k", "header-over-8k", "malformed-header", "not-http"],
)
async def test_requests_aiohttp_cannot_parse_get_the_envelope_without_their_bytes(
    coordinator: CoordinatorHandle, start_agent: StartAgent, request_bytes: bytes
) -> None:
    agent = await start_agent()
    for port in (coordinator.port, agent.port):
        status, body = _envelope(await _raw(port, request_bytes))
        assert status == 400, body
        assert body["success"] is False
        assert body["error"]["code"] == "INVALID_REQUEST", body  # type: ignore[index]
        assert SECRET not in json.dumps(body), body


async def _closed_after(port: int, request: bytes, bound: float) -> float:
    """Send ``request`` and keep the connection; seconds until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(bound):
            while await reader.read(65536):
                pass
        return time.monotonic() - started
    finally:
        writer.close()
        await writer.wait_closed()


async def test_half_sent_headers_and_idle_keepalive_connections_are_closed(tmp_path: Path) -> None:
    config = coordinator_config(tmp_path / "c", listen={"header_read_timeout": 0.5, "keepalive_timeout": 1.0})
    async with running_coordinator(config) as handle:
        # A client that never finishes its headers is cut off at the header-read bound.
        took = await _closed_after(handle.port, b"GET /api/health HTTP/1.1\r\nHost: x\r\n", bound=5)
        assert took < 0.9 + 0.5, took
        # An idle keep-alive connection after a complete request goes at the keep-alive bound.
        took = await _closed_after(handle.port, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n", bound=5)
        assert 0.9 <= took < 1.0 + 1.5, took


def test_the_server_timeouts_have_sane_defaults_on_both_daemons() -> None:
    from agent.config import AgentConfig
    from coordinator.config import CoordinatorConfig

    for listen in (CoordinatorConfig().listen, AgentConfig.model_validate({"coordinator": {"url": "http://x"}}).listen):
        assert 1 <= listen.header_read_timeout <= 60
        assert 1 <= listen.keepalive_timeout <= 300
