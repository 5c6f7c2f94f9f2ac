"""Calls to agents, over the channels they opened (``shared.protocol``): the coordinator never connects out.

Each connected agent has one :class:`AgentLink`. A call is a request frame with an id and a bounded wait for
its answer: no channel, a channel that closes while the call waits, or no answer within the timeout is
``RUNNER_UNAVAILABLE`` (503), at once in the first two cases. An agent's error envelope comes back as the same
typed error. A runner's registered host and port are never used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel

from coordinator.bus import FleetBus, LocalBus, not_connected
from coordinator.config import Agents
from coordinator.store.base import RunnerRecord
from shared import protocol
from shared.errors import RunnerUnavailable, from_envelope

log = structlog.get_logger(__name__)


class AgentLink:
    """One agent's open channel: sends requests, matches answers to them by id."""

    def __init__(self, runner_id: str, ws: web.WebSocketResponse) -> None:
        self.runner_id = runner_id
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.closed = False

    async def call(self, kind: str, body: BaseModel | dict[str, Any] | None, timeout: float) -> Any:
        if self.closed:
            raise self.unavailable("its channel is closed")
        frame_id = next(self._ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[frame_id] = answer
        try:
            await self.ws.send_str(protocol.request(frame_id, kind, body))
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError as e:
            raise self.unavailable(f"it did not answer within {timeout:g}s") from e
        except (ConnectionError, RuntimeError) as e:  # the transport went away mid-send
            raise self.unavailable("its channel closed") from e
        finally:
            self._waiting.pop(frame_id, None)

    def answered(self, frame: protocol.ReplyFrame | protocol.ErrorFrame) -> None:
        waiter = self._waiting.get(frame.id)
        if waiter is None or waiter.done():
            return  # answered after the caller gave up
        if isinstance(frame, protocol.ErrorFrame):
            waiter.set_exception(from_envelope(frame.status, frame.body))
        else:
            waiter.set_result(frame.body)

    def close(self) -> None:
        """The channel ended: every call still waiting fails now."""
        self.closed = True
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(self.unavailable("its channel closed"))
        self._waiting.clear()

    def unavailable(self, why: str) -> RunnerUnavailable:
        return RunnerUnavailable(f"Runner '{self.runner_id}' is not available: {why}", runner_id=self.runner_id)


class AgentClient:
    """The open channels by runner id; at most one per runner (a newer connection replaces an older one)."""

    def __init__(self, settings: Agents, bus: FleetBus | None = None) -> None:
        self._settings = settings
        self._links: dict[str, AgentLink] = {}
        self.bus: FleetBus = bus or LocalBus()
        """Where calls for runners whose channel is not here go (and where the channels here are recorded)."""

    async def close(self) -> None:
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            link.close()
            with contextlib.suppress(ConnectionError):
                await link.ws.close(message=b"coordinator shutting down")

    def connected(self, runner_id: str) -> bool:
        return runner_id in self._links

    def attach(self, link: AgentLink) -> AgentLink | None:
        """Make ``link`` the runner's channel; returns the one it replaces (to be closed by the caller)."""
        old = self._links.get(link.runner_id)
        self._links[link.runner_id] = link
        self.bus.channel_opened(link.runner_id)
        if old is not None:
            old.close()
        return old

    def detach(self, link: AgentLink) -> None:
        link.close()
        if self._links.get(link.runner_id) is link:
            del self._links[link.runner_id]
            self.bus.channel_closed(link.runner_id)

    async def call(
        self,
        runner: RunnerRecord,
        kind: protocol.AgentCall,
        body: BaseModel | dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Ask the runner's agent and return its answer's body (a dict), over the channel here or, through the
        fleet bus, over the one another coordinator holds."""
        timeout = timeout or self._settings.request_timeout
        link = self._links.get(runner.id)
        if link is None:
            sent = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
            return await self.bus.call(runner.id, kind, sent, timeout)
        return await link.call(kind, body, timeout)

    async def call_here(self, runner_id: str, kind: str, body: Any, timeout: float) -> Any:
        """A call forwarded by another coordinator, made on the channel held here (never forwarded again)."""
        link = self._links.get(runner_id)
        if link is None:
            raise not_connected(runner_id, "its agent's channel to the coordinator holding it has just closed")
        return await link.call(kind, body, timeout)
