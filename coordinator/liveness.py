"""Marks runners ``inactive`` once their heartbeats stop (a heartbeat marks them ``active`` again)."""

from __future__ import annotations

import asyncio
import time

import structlog

from coordinator.api import events
from coordinator.hub import Hub
from coordinator.store.base import Store

log = structlog.get_logger(__name__)


async def watch(store: Store, hub: Hub, multiplier: float, every: float) -> None:
    while True:
        try:
            for change in await store.mark_stale(time.time(), multiplier):
                log.warning("runner went quiet", runner_id=change.runner_id, old_status=change.old_status)
                hub.publish(events.status_change(change))
        except Exception:
            log.exception("liveness check failed")
        await asyncio.sleep(every)
