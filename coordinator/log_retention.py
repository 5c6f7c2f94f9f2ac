"""Keeping stored job logs within ``logs.max_bytes_per_job`` and ``logs.max_total_bytes``.

An owned background task: a pass at start over every job, then, while logs are written, one pass every
``logs.retention_interval`` seconds over the jobs written to meanwhile (and the total). Between passes
nothing is checked, so a job may pass its limit by what arrives in one interval; the pass then deletes its
oldest chunks (``LogStore.enforce``, ``coordinator.store.protocols``). Idle logs cost nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import structlog
from aiohttp import web

from coordinator import keys
from coordinator.config import Logs
from coordinator.store.protocols import LogStore
from shared.models import AgentEvent, LogEvent
from shared.tasks import TaskSet

log = structlog.get_logger(__name__)


class LogRetention:
    def __init__(self, store: LogStore, settings: Logs) -> None:
        self._store = store
        self._settings = settings
        self._jobs: set[str] = set()
        self._written = asyncio.Event()
        self.passes = 0
        """Retention passes run since start (for tests)."""

    @property
    def enabled(self) -> bool:
        return self._settings.max_bytes_per_job is not None or self._settings.max_total_bytes is not None

    def observe(self, runner_id: str, events: Sequence[AgentEvent]) -> None:
        """A batch was stored (a ``LogFeed`` listener)."""
        for event in events:
            if isinstance(event, LogEvent):
                if event.job_id is not None:
                    self._jobs.add(event.job_id)
                self._written.set()

    async def run(self) -> None:
        await self.enforce(None)  # every job: the limits may have been lowered since the last start
        while True:
            await self._written.wait()
            await asyncio.sleep(self._settings.retention_interval)
            self._written.clear()
            jobs, self._jobs = self._jobs, set()
            try:
                await self.enforce(jobs)
            except Exception:
                log.exception("log retention failed; retrying at the next pass")
                self._jobs |= jobs
                self._written.set()

    async def enforce(self, jobs: set[str] | None) -> None:
        settings = self._settings
        dropped = await self._store.enforce(settings.max_bytes_per_job, settings.max_total_bytes, jobs)
        self.passes += 1
        if dropped.chunks:
            log.info("old log chunks deleted", chunks=dropped.chunks, bytes=dropped.bytes)


async def log_retention(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the retention task, when a limit is set."""
    retention = LogRetention(app[keys.LOG_STORE], app[keys.CONFIG].logs)
    tasks = TaskSet("logs")
    if retention.enabled:
        app[keys.LOG_FEED].listeners.append(retention.observe)
        tasks.spawn(retention.run(), "retention")
    yield
    await tasks.close()
    if retention.observe in app[keys.LOG_FEED].listeners:
        app[keys.LOG_FEED].listeners.remove(retention.observe)
