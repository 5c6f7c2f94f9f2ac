"""``WS /runners/ws``: live runner and job events.

``?runner_id=`` narrows the stream to one runner, ``?events=a,b`` to some event types. Browsers, which cannot set
headers on a WebSocket, authenticate with a single-use ``?ticket=`` (see ``coordinator.tickets``).

Each connection has three tasks: one sends queued events, one reads the client's frames (so pings, pongs and
the close handshake are processed), and the handler waits for whichever ends first, or for the hub to tell it
to close (client too slow, coordinator shutting down).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSCloseCode, WSMsgType, web

from coordinator import keys
from coordinator.hub import Subscriber
from shared.errors import InvalidRequest

EVENT_TYPES = frozenset(
    {
        "runner_status_change",
        "runner_registered",
        "runner_updated",
        "runner_deleted",
        "job_status_change",
        "job_assigned",
    }
)


async def runner_updates(request: web.Request) -> web.WebSocketResponse:
    runner_id = request.query.get("runner_id") or None
    wanted = frozenset(t for t in request.query.get("events", request.query.get("type", "")).split(",") if t)
    unknown = wanted - EVENT_TYPES
    if unknown:
        raise InvalidRequest(
            f"Unknown event type(s): {', '.join(sorted(unknown))}", field="events", allowed=sorted(EVENT_TYPES)
        )
    hub = request.app[keys.HUB]
    ws = web.WebSocketResponse(heartbeat=30, timeout=hub.close_timeout)
    await ws.prepare(request)
    sub = hub.subscribe(runner_id, wanted)
    sender = asyncio.create_task(_send_events(ws, sub), name="ws:sender")
    reader = asyncio.create_task(_read_frames(ws), name="ws:reader")
    told = asyncio.create_task(sub.stopping.wait(), name="ws:stopping")
    try:
        await asyncio.wait({sender, reader, told}, return_when=asyncio.FIRST_COMPLETED)
        if not ws.closed:
            await _close(request, ws, sub.close_code or WSCloseCode.OK, sub.close_reason, hub.close_timeout)
    finally:
        hub.unsubscribe(sub)
        for task in (sender, reader, told):
            task.cancel()
        await asyncio.gather(sender, reader, told, return_exceptions=True)
    return ws


async def _send_events(ws: web.WebSocketResponse, sub: Subscriber) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):  # the client went away mid-send
        while sub.close_code is None:
            text = await sub.queue.get()
            if sub.close_code is not None:
                break  # told to close: what is still queued is dropped
            await ws.send_str(text)


async def _read_frames(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) client frames; ends when the client closes or the connection fails."""
    async for message in ws:
        if message.type is WSMsgType.ERROR:
            break


async def _close(request: web.Request, ws: web.WebSocketResponse, code: int, reason: bytes, timeout: float) -> None:
    """Send the close frame and end the connection, bounded by ``timeout`` even for a client that reads nothing.

    A client that stopped reading leaves the transport paused, and writing the close frame may then wait for it:
    past ``timeout`` the connection is dropped. Otherwise the close frame is queued behind what the client has
    not read yet; if that is still unread ``timeout`` later, the connection is dropped then.
    """
    transport = request.transport
    try:
        async with asyncio.timeout(timeout):
            await ws.close(code=code, message=reason, drain=False)
    except TimeoutError:
        if transport is not None:
            transport.abort()
        return
    if transport is not None and transport.get_write_buffer_size() > 0:
        asyncio.get_running_loop().call_later(timeout, transport.abort)
