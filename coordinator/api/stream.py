"""``WS /runners/ws``: live runner and job events."""

from __future__ import annotations

import asyncio

from aiohttp import WSCloseCode, WSMsgType, web

from coordinator import keys
from shared.errors import InvalidRequest

EVENT_TYPES = frozenset(
    {"runner_status_change", "runner_registered", "runner_updated", "runner_deleted", "job_status_change"}
)


async def runner_updates(request: web.Request) -> web.WebSocketResponse:
    runner_id = request.query.get("runner_id") or None
    wanted = frozenset(t for t in request.query.get("events", request.query.get("type", "")).split(",") if t)
    unknown = wanted - EVENT_TYPES
    if unknown:
        raise InvalidRequest(
            f"Unknown event type(s): {', '.join(sorted(unknown))}", field="events", allowed=sorted(EVENT_TYPES)
        )
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    hub = request.app[keys.HUB]
    sub = hub.subscribe(runner_id, wanted)
    hub.track(ws)
    reader = asyncio.get_running_loop().create_task(_drain_incoming(ws), name="ws:reader")
    getter: asyncio.Future[str | None] | None = None
    try:
        while not ws.closed:
            # Wait for the next event or for the client to go away, whichever comes first: a closed
            # connection must not keep this handler (and the coordinator's shutdown) waiting for an event.
            getter = asyncio.ensure_future(sub.queue.get())
            await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            text = getter.result()
            if text is None:
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"client too slow: event queue overflowed")
                break
            await ws.send_str(text)
    except (ConnectionResetError, RuntimeError):
        pass
    finally:
        hub.unsubscribe(sub)
        hub.untrack(ws)
        reader.cancel()
        if getter is not None:
            getter.cancel()
        if not ws.closed:
            await ws.close()
    return ws


async def _drain_incoming(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) client frames so pings, pongs and the close handshake are processed."""
    async for message in ws:
        if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
            break
