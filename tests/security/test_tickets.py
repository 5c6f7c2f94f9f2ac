"""No secrets in URLs: single-use, short-lived tickets for WebSocket and SSE clients; ``?token=`` refused."""

from __future__ import annotations

import aiohttp
import pytest

from coordinator import keys
from coordinator.auth import Principal
from coordinator.tickets import TicketBook
from tests.conftest import API_KEY, CoordinatorHandle
from tests.helpers import assert_error, register_runner


async def _ticket(coordinator: CoordinatorHandle, api_key: str = API_KEY) -> str:
    status, body = await coordinator.client(api_key).post("/tickets")
    assert status == 201, body
    assert body["expires_in"] == 30
    return str(body["ticket"])


def test_a_ticket_is_good_once_and_only_within_its_lifetime() -> None:
    now = [1000.0]
    book = TicketBook(ttl=30, clock=lambda: now[0])
    principal = Principal("viewer", name="v")
    first = book.issue(principal)
    assert book.redeem(first) == principal
    assert book.redeem(first) is None  # reuse
    late = book.issue(principal)
    now[0] += 30.5
    assert book.redeem(late) is None  # expiry
    assert book.redeem("tk_made-up") is None


async def test_a_ticket_opens_one_log_stream(coordinator: CoordinatorHandle) -> None:
    runner_id = (await register_runner(coordinator.api))["runner_id"]
    ticket = await _ticket(coordinator)
    url = f"{coordinator.api_url}/runners/{runner_id}/logs?follow=true&ticket={ticket}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
        async with session.get(url) as again:
            assert again.status == 401
            assert "already used or expired" in (await again.json())["error"]["message"]


async def test_a_ticket_is_refused_off_the_streaming_routes(coordinator: CoordinatorHandle) -> None:
    ticket = await _ticket(coordinator)
    anonymous = coordinator.client(None)
    status, body = await anonymous.get(f"/runners?ticket={ticket}")
    assert_error(status, body, 401, "AUTHENTICATION_REQUIRED", parameter="ticket")


async def test_a_ticket_carries_no_more_than_its_issuer(coordinator: CoordinatorHandle) -> None:
    """A ticket from a runner token cannot be had; one from a viewer is a viewer's."""
    runner = await register_runner(coordinator.api)
    status, body = await coordinator.client(runner["registration_token"]).post("/tickets")
    assert_error(status, body, 403, "AUTHORIZATION_FAILED")
    assert coordinator.app is not None
    viewer_ticket = coordinator.app[keys.TICKETS].issue(Principal("viewer", name="v"))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{coordinator.api_url}/runners/ws?ticket={viewer_ticket}")
        await ws.close()


@pytest.mark.parametrize("credential", [API_KEY, "reg_token_anything", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
async def test_a_long_lived_credential_in_the_url_is_refused(coordinator: CoordinatorHandle, credential: str) -> None:
    for path in ("/runners/ws", "/runners"):
        status, body = await coordinator.client(None).get(f"{path}?token={credential}")
        error = assert_error(status, body, 401, "AUTHENTICATION_REQUIRED", parameter="token")
        assert "POST /api/tickets" in error["message"]
    # Even beside a good header: the credential has leaked into a URL already.
    status, body = await coordinator.api.get(f"/runners?token={credential}")
    assert_error(status, body, 401, "AUTHENTICATION_REQUIRED", parameter="token")


async def test_the_specs_javascript_websocket_example(coordinator: CoordinatorHandle) -> None:
    """``new WebSocket("ws://localhost:8080/api/runners/ws")`` sends no credential: the upgrade is refused with
    401 (a browser sees the connection fail). The working form is ``...?ticket=<from POST /api/tickets>``."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{coordinator.api_url}/runners/ws")
        assert refused.value.status == 401
        ticket = await _ticket(coordinator)
        ws = await session.ws_connect(f"{coordinator.api_url}/runners/ws?ticket={ticket}")
        await register_runner(coordinator.api)
        message = await ws.receive_json(timeout=10)
        assert message["type"] == "runner_registered"
        await ws.close()
