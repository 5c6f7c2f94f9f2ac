"""Heartbeats in batches: what a heartbeat costs the coordinator, whichever transport delivered it.

:meth:`Heartbeats.record` is the one call a heartbeat handler makes. The runner's liveness (``last_seen``, load,
interval) is kept in memory by the store (``Store.record_heartbeat``) and its metric samples are queued here;
a flusher writes both for every runner heard from, in one transaction each, every ``flush_interval`` seconds
(sooner once ``max_pending`` heartbeats wait). So 10,000 runners beating every 10 s cost about one
transaction a second, not two thousand.

Nothing a reader or the liveness check needs is lost by the delay: reads see the in-memory record, the
liveness check writes the pending heartbeats before it judges (``mark_stale``), and a heartbeat that changes a
runner's status is written at once, so every ``inactive``/``active`` transition is stored and announced as it
happens. What a crash can lose is at most ``flush_interval`` seconds of ``last_seen`` and samples, which the
next heartbeat restores (the agents resend unacknowledged samples).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from coordinator.store.base import StatusChange, Store
from coordinator.store.protocols import MetricsStore
from shared.models import CurrentLoad, MetricSample

log = structlog.get_logger(__name__)


class Heartbeats:
    def __init__(self, store: Store, metrics: MetricsStore, flush_interval: float, max_pending: int) -> None:
        self._store = store
        self._metrics = metrics
        self._interval = flush_interval
        self._max_pending = max_pending
        self._samples: list[tuple[str, Sequence[MetricSample], float]] = []
        self._due = asyncio.Event()
        self._lock = asyncio.Lock()

    async def record(
        self,
        runner_id: str,
        load: CurrentLoad,
        status: str,
        interval: float,
        samples: Sequence[MetricSample],
        now: float,
    ) -> StatusChange | None:
        """Record one heartbeat; ``None`` if the runner does not exist. Returns the runner's status change
        (``old_status == new_status`` when it kept its status)."""
        change = await self._store.record_heartbeat(runner_id, load, status, interval, now)
        if change is not None and samples:
            self._samples.append((runner_id, samples, now))
            if len(self._samples) >= self._max_pending:
                self._due.set()
        return change

    async def flush(self) -> None:
        """Write every heartbeat recorded so far (liveness, then samples)."""
        async with self._lock:
            samples, self._samples = self._samples, []
            await self._store.flush_heartbeats()
            if samples:
                try:
                    await self._metrics.add_sample_batch(samples)
                except BaseException:
                    self._samples[:0] = samples  # kept for the next flush (resending them is harmless)
                    raise

    async def flush_forever(self) -> None:
        """The flusher: a background task; writes what is left when cancelled (shutdown)."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._due.wait()
                self._due.clear()
                try:
                    await self.flush()
                except Exception:
                    log.exception("writing heartbeats failed; retrying at the next flush")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())
