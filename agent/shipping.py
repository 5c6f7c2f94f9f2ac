"""The outbox: everything the agent tells the coordinator about jobs, delivered exactly once and in order.

Events are written to the agent's SQLite before they are sent, each numbered by the outbox sequence. The
shipper sends whatever is pending as one batch, the coordinator applies what is past its high-water mark and
acknowledges the highest sequence it stored, and only then are those entries deleted. Resending after any
failure or restart is therefore always safe.

Log lines are buffered in memory only until the single writer's next transaction (no timer: whatever arrives
while a write is in flight goes into the next one). A job transition flushes the buffered lines first, so a
step's output always precedes its ``finished`` event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from agent.coordinator_client import CoordinatorClient, CoordinatorUnreachable
from agent.identity import Identity
from agent.store import AgentStore
from shared.errors import ApiError, AuthenticationRequired, RunnerNotFound

log = structlog.get_logger(__name__)

BATCH_LIMIT = 2000
MAX_BACKOFF = 5.0


class Outbox:
    def __init__(self, store: AgentStore, identity: Callable[[], Identity]) -> None:
        self._store = store
        self._identity = identity
        self._lines: list[dict[str, Any]] = []
        self._lines_waiting = asyncio.Event()
        self.pending = asyncio.Event()
        """Set whenever new entries are durable: the shipper's cue."""

    async def transition(self, job_id: str, status: str, attempt: int, *events: dict[str, Any]) -> None:
        """Record a job's state and queue the events that report it, after any buffered lines."""
        lines, self._lines = self._lines, []
        await self._store.transition(job_id, status, attempt, [*lines, *events], self._identity().runner_id)
        self.pending.set()

    async def emit(self, *events: dict[str, Any]) -> None:
        lines, self._lines = self._lines, []
        await self._store.append_events(self._identity().runner_id, [*lines, *events])
        self.pending.set()

    def line(self, entry: dict[str, Any]) -> None:
        """Queue a log entry without waiting (called for every line a step prints)."""
        self._lines.append(entry)
        self._lines_waiting.set()

    async def run_writer(self) -> None:
        while True:
            await self._lines_waiting.wait()
            self._lines_waiting.clear()
            if self._lines:
                await self.emit()

    async def flush(self) -> None:
        if self._lines:
            await self.emit()


class Shipper:
    def __init__(
        self,
        store: AgentStore,
        outbox: Outbox,
        client: CoordinatorClient,
        identity: Callable[[], Identity],
        on_forgotten: Callable[[], None],
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._client = client
        self._identity = identity
        self._on_forgotten = on_forgotten
        self.failures = 0

    async def run(self) -> None:
        backoff = 0.05
        while True:
            await self._outbox.pending.wait()
            self._outbox.pending.clear()
            while True:
                identity = self._identity()
                batch = await self._store.pending_events(identity.runner_id, BATCH_LIMIT)
                if not batch:
                    break
                try:
                    acked = await self._send(identity, batch)
                except CoordinatorUnreachable as e:
                    self.failures += 1
                    log.warning("coordinator unreachable; events kept for resend", error=str(e), retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                except (RunnerNotFound, AuthenticationRequired):
                    log.warning("coordinator no longer knows this runner", runner_id=identity.runner_id)
                    self._on_forgotten()
                    break
                except ApiError as e:
                    self.failures += 1
                    log.error("coordinator refused an event batch", code=e.code, error=e.message, retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                backoff = 0.05
                await self._store.acknowledge(identity.runner_id, acked)

    async def _send(self, identity: Identity, batch: list[tuple[int, str]]) -> int:
        # Bodies are stored as JSON objects without their sequence number; splice it in front.
        events = ",".join(f'{{"seq":{seq},{body[1:]}' for seq, body in batch)
        answer = await self._client.call(
            "POST", f"/runners/{identity.runner_id}/events", identity.token, raw=f'{{"events":[{events}]}}'
        )
        return int(answer["acked_seq"])
