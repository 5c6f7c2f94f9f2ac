"""Delivery of queued jobs from the coordinator to the agents.

A job is the coordinator's until its agent acknowledges it (after storing it). Each runner has at most one
delivery worker, woken on submit and on every heartbeat; it hands over the runner's undelivered jobs in
submission order and stops at the first failure, leaving the rest held as ``queued`` for the next wake-up.
Delivery is idempotent by job id on the agent, so a lost acknowledgement only costs a resend.
"""

from __future__ import annotations

import asyncio

import structlog

from coordinator.proxy import AgentClient
from coordinator.store.base import Store
from shared.errors import ApiError
from shared.models import JobAssignment
from shared.tasks import TaskSet
from shared.timeutil import from_epoch

log = structlog.get_logger(__name__)

BATCH = 100


class Dispatcher:
    def __init__(self, store: Store, agents: AgentClient) -> None:
        self._store = store
        self._agents = agents
        self._tasks = TaskSet("dispatch")
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._pending: set[str] = set()

    def kick(self, runner_id: str) -> None:
        """Deliver the runner's held jobs soon. Cheap and safe to call any number of times."""
        self._pending.add(runner_id)
        if runner_id not in self._workers:
            self._workers[runner_id] = self._tasks.spawn(self._deliver(runner_id), runner_id)

    async def _deliver(self, runner_id: str) -> None:
        try:
            while runner_id in self._pending:
                self._pending.discard(runner_id)
                runner = await self._store.get_runner(runner_id)
                if runner is None or runner.status in ("stopped", "restarting"):
                    return  # held until the runner starts again
                jobs = await self._store.undelivered_jobs(runner_id, BATCH)
                for job in jobs:
                    assignment = JobAssignment(
                        job_id=job.id, runner_id=runner_id, created_at=from_epoch(job.created_at), spec=job.spec
                    )
                    try:
                        await self._agents.call(runner, "POST", "/jobs", assignment.model_dump(mode="json"))
                    except ApiError as e:
                        log.info(
                            "job held: agent did not take it",
                            runner_id=runner_id,
                            job_id=job.id,
                            code=e.code,
                            reason=e.message,
                        )
                        return
                    await self._store.mark_delivered(job.id)
                if len(jobs) == BATCH:
                    self._pending.add(runner_id)
        finally:
            self._workers.pop(runner_id, None)

    async def close(self) -> None:
        await self._tasks.close()
