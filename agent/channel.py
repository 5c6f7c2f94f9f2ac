"""The agent's one connection to its coordinator (``shared.protocol``): opened by the agent, kept, reopened.

The channel is a WebSocket on the agent's one client session (``agent.coordinator_client``), so agents behind
NAT or a firewall need outbound access only. Each connection starts with ``hello`` (the runner's
announcement); then the agent's heartbeats and event batches go out as requests, and the coordinator's calls
(job delivery, cancel, configuration, control, status, health) come in and are answered by
``agent.api.CALLS``. A job delivery is handled in arrival order before the next frame is read (it is stored,
then acknowledged); every other call runs as its own task, so a slow one (a graceful stop) never holds up the
acknowledgement of an event batch.

A lost connection fails every request still waiting (:class:`ChannelDown`, telling whether the request left)
and is reopened at once, at the next coordinator of ``coordinator.urls`` when the one it was on is gone
(``agent.coordinator_client``); a round of the list that finds none is followed by a jittered exponential
backoff (``RECONNECT_MIN`` to ``RECONNECT_MAX`` seconds) before the next. A coordinator that no longer knows
the runner (401/404 at the handshake) makes the agent register anew.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from pydantic import BaseModel, ValidationError

from agent.coordinator_client import CoordinatorClient, CoordinatorUnreachable
from agent.identity import Identity
from shared import protocol
from shared.errors import ApiError, AuthenticationRequired, InternalError, RunnerNotFound, from_envelope
from shared.http import dumps, validation_error
from shared.tasks import TaskSet

log = structlog.get_logger(__name__)

RECONNECT_MIN = 0.05
RECONNECT_MAX = 5.0
MAX_MESSAGE = 64 * 1024 * 1024

Handler = Callable[[Any], Awaitable[BaseModel]]
"""Answers one kind of coordinator call: takes the frame's validated body, returns the reply."""


class ChannelDown(CoordinatorUnreachable):
    """The channel is not open, or closed before the answer came. ``sent``: the request may have arrived."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class Channel:
    def __init__(
        self,
        client: CoordinatorClient,
        identity: Callable[[], Identity],
        hello: Callable[[], Awaitable[protocol.Hello]],
        calls: dict[str, Handler],
        on_forgotten: Callable[[], None],
        on_connected: Callable[[], None],
    ) -> None:
        self._client = client
        self._identity = identity
        self._hello = hello
        self._calls = calls
        self._on_forgotten = on_forgotten
        self._on_connected = on_connected
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._handlers = TaskSet("channel-call")
        self.connected = asyncio.Event()
        self.connects = 0
        """Connections made since start (for tests and logs)."""

    # --- requests to the coordinator ------------------------------------------------------------------------

    async def request(self, kind: protocol.CoordinatorCall, body: BaseModel | str, timeout: float) -> Any:
        """Send a request and return the answer's body; ``body`` may be already-encoded JSON."""
        ws = self._ws
        if ws is None or not self.connected.is_set():
            raise ChannelDown("the channel to the coordinator is not open", sent=False)
        frame_id = next(self._ids)
        encoded = (
            protocol.raw_request(frame_id, kind, body)
            if isinstance(body, str)
            else protocol.request(frame_id, kind, body)
        )
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[frame_id] = answer
        try:
            try:
                await ws.send_str(encoded)
            except (ConnectionError, RuntimeError) as e:
                raise ChannelDown(f"the channel closed: {e}", sent=True) from e
            try:
                async with asyncio.timeout(timeout):
                    return await answer
            except TimeoutError as e:
                raise ChannelDown(f"no answer to {kind} within {timeout:g}s", sent=True) from e
        finally:
            self._waiting.pop(frame_id, None)

    # --- the connection -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the channel open, forever."""
        backoff = RECONNECT_MIN
        while True:
            try:
                await self._connect_and_serve()
                backoff = RECONNECT_MIN  # it was up: reconnect quickly
            except (RunnerNotFound, AuthenticationRequired) as e:
                log.warning("coordinator refused the channel; registering again", code=e.code)
                self._on_forgotten()
            except (CoordinatorUnreachable, ApiError) as e:
                log.warning("channel to the coordinator failed", error=str(e), retry_in=round(backoff, 3))
            delay = backoff * random.uniform(0.5, 1.5)
            backoff = min(backoff * 2, RECONNECT_MAX)
            await asyncio.sleep(delay)

    async def _connect_and_serve(self) -> None:
        identity = self._identity()
        ws = await self._client.ws_connect(protocol.channel_path(identity.runner_id), identity.token, MAX_MESSAGE)
        try:
            hello = await self._hello()
            await ws.send_str(protocol.request(0, "hello", hello))
            welcome = await ws.receive(timeout=protocol.HELLO_TIMEOUT)
            if welcome.type is not aiohttp.WSMsgType.TEXT:
                raise CoordinatorUnreachable(f"the channel closed before the welcome ({welcome.type.name})")
            frame = protocol.COORDINATOR_FRAMES.validate_json(welcome.data)
            if isinstance(frame, protocol.ErrorFrame):
                raise from_envelope(frame.status, frame.body)
            self._ws = ws
            self.connected.set()
            self.connects += 1
            log.info("channel to the coordinator open", connects=self.connects)
            self._on_connected()
            await self._serve(ws)
        except (TimeoutError, ValidationError) as e:
            raise CoordinatorUnreachable(f"channel greeting failed: {type(e).__name__}") from e
        finally:
            self.connected.clear()
            self._ws = None
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ChannelDown("the channel closed before the answer", sent=True))
            self._waiting.clear()
            await ws.close()

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                if message.type is aiohttp.WSMsgType.ERROR:
                    break
                continue
            try:
                frame = protocol.COORDINATOR_FRAMES.validate_json(message.data)
            except ValidationError as e:
                frame_id = _frame_id(message.data)
                await _send(ws, protocol.error(frame_id, 400, dumps(validation_error(e).envelope())))
                continue
            if isinstance(frame, protocol.ReplyFrame | protocol.ErrorFrame):
                self._answered(frame)
            elif isinstance(frame, protocol.JobFrame):
                await self._answer(ws, frame)  # in order: stored, acknowledged, then the next frame
            else:
                self._handlers.spawn(self._answer(ws, frame), frame.kind)
        log.warning("channel to the coordinator closed", code=ws.close_code)

    def _answered(self, frame: protocol.ReplyFrame | protocol.ErrorFrame) -> None:
        waiter = self._waiting.get(frame.id)
        if waiter is None or waiter.done():
            return
        if isinstance(frame, protocol.ErrorFrame):
            waiter.set_exception(from_envelope(frame.status, frame.body))
        else:
            waiter.set_result(frame.body)

    async def _answer(self, ws: aiohttp.ClientWebSocketResponse, frame: Any) -> None:
        try:
            answer = await self._calls[frame.kind](frame.body)
        except ApiError as e:
            await _send(ws, protocol.error(frame.id, e.status, dumps(e.envelope())))
            return
        except Exception:
            log.exception("coordinator call failed", kind=frame.kind)
            error = InternalError("The agent failed to handle the call")
            await _send(ws, protocol.error(frame.id, error.status, dumps(error.envelope())))
            return
        await _send(ws, protocol.reply(frame.id, answer))

    async def reconnect(self) -> None:
        """Close the open connection (if any); the loop in :meth:`run` opens a new one for the current identity."""
        if self._ws is not None:
            await self._ws.close()

    async def close(self) -> None:
        await self._handlers.close()


async def _send(ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
    """Answer the coordinator; an answer that cannot go out any more is lost with the connection (the
    coordinator's call has already failed as RUNNER_UNAVAILABLE)."""
    try:
        await ws.send_str(text)
    except (ConnectionError, RuntimeError):
        pass


def _frame_id(text: str) -> int:
    try:
        return protocol.FrameId.model_validate_json(text).id
    except ValidationError:
        return 0
