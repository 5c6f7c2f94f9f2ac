"""Delivery of queued jobs from the coordinator to the agents, over their channels (``coordinator.proxy``).

A job is the coordinator's until its agent acknowledges it (after storing it). Each runner has at most one
delivery worker, woken on submit, on a connect, on a status change and on a heartbeat while anything may be
held for it; it hands over the runner's undelivered jobs in
submission order and stops at the first failure, leaving the rest held as ``queued`` for the next wake-up.
Delivery is idempotent by job id on the agent, so a lost acknowledgement only costs a resend.

Fast path: while a runner is known to have nothing held (the last scan of its undelivered jobs found none
and no delivery failed since), a freshly submitted job is pushed straight from memory, without reading the
store again; any doubt (a failure, a coordinator restart) falls back to scanning the store in order.

In a fleet of coordinators, the one holding the runner's channel delivers: a job stored through another
wakes that one through the fleet bus (``coordinator.bus``) instead of being pushed from here. If no
coordinator holds the channel, the job stays held until the agent's next hello, wherever it connects.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import structlog

from coordinator import sealing
from coordinator.proxy import AgentClient
from coordinator.store.base import JobRecord, RunnerRecord, Store
from shared.errors import ApiError
from shared.models import JobAssignment
from shared.protocol import CancelRequest
from shared.tasks import TaskSet
from shared.timeutil import from_epoch

log = structlog.get_logger(__name__)

BATCH = 100
HELD_STATUSES = ("stopped", "restarting", "error")


class Dispatcher:
    def __init__(self, store: Store, agents: AgentClient) -> None:
        self._store = store
        self._agents = agents
        self._tasks = TaskSet("dispatch")
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._pending: set[str] = set()
        self._clean: set[str] = set()  # runners whose only undelivered jobs are in ``_fresh``
        self._fresh: dict[str, deque[JobRecord]] = {}
        self._runners: dict[str, RunnerRecord] = {}

    def submitted(self, runner: RunnerRecord, job: JobRecord) -> None:
        """A job was just stored for ``runner``: deliver it (and anything held before it) now."""
        if not self._agents.connected(runner.id):
            log.info("job held: its agent has no channel to this coordinator", runner_id=runner.id, job_id=job.id)
        elif runner.id in self._clean:
            self._fresh.setdefault(runner.id, deque()).append(job)
            self._runners[runner.id] = runner
        self.kick(runner.id)

    def heard_from(self, runner_id: str) -> None:
        """The runner's agent is alive (a heartbeat that kept its status): deliver what is held for it, unless
        it is known to have nothing held (then this costs nothing: no wake-up, no read of the store)."""
        if runner_id not in self._clean:
            self.kick(runner_id)

    def kick(self, runner_id: str) -> None:
        """Deliver the runner's held jobs soon. Cheap and safe to call any number of times."""
        if not self._agents.connected(runner_id):
            # Not here: the coordinator holding its channel delivers (the next delivery here scans the store).
            self._clean.discard(runner_id)
            self._fresh.pop(runner_id, None)
            self._runners.pop(runner_id, None)
            self._agents.bus.wake(runner_id)
            return
        self._pending.add(runner_id)
        if runner_id not in self._workers:
            self._workers[runner_id] = self._tasks.spawn(self._deliver(runner_id), runner_id)

    async def _deliver(self, runner_id: str) -> None:
        try:
            while runner_id in self._pending:
                self._pending.discard(runner_id)
                fresh = self._fresh.pop(runner_id, None)
                runner = self._runners.pop(runner_id, None)
                if fresh and runner is not None and runner_id in self._clean:
                    if not await self._push_all(runner, list(fresh)):
                        return
                    continue
                if not await self._scan(runner_id):
                    return
        finally:
            self._workers.pop(runner_id, None)

    async def _scan(self, runner_id: str) -> bool:
        """Deliver the runner's undelivered jobs from the store, oldest first; ``False`` on a failure."""
        self._clean.discard(runner_id)
        self._fresh.pop(runner_id, None)  # the scan covers them: they are stored before they are queued here
        runner = await self._store.get_runner(runner_id)
        if runner is None or runner.status in HELD_STATUSES:
            return False  # held until the runner starts again
        jobs = await self._store.undelivered_jobs(runner_id, BATCH)
        if not await self._push_all(runner, jobs):
            return False
        if len(jobs) == BATCH:
            self._pending.add(runner_id)
        else:
            self._clean.add(runner_id)
        return True

    async def _push_all(self, runner: RunnerRecord, jobs: list[JobRecord]) -> bool:
        for job in jobs:
            if not await self._push(runner, job):
                self._clean.discard(runner.id)
                self._fresh.pop(runner.id, None)
                return False
        return True

    async def _push(self, runner: RunnerRecord, job: JobRecord) -> bool:
        undecryptable = sealing.still_sealed(job.spec)
        if undecryptable:
            # The state directory's secrets.key changed since the job was stored: never send a sealed value.
            reason = f"masked variable(s) {', '.join(undecryptable)} cannot be decrypted (secrets.key changed)"
            await self._store.cancel_held_job(job.id, reason, time.time())
            log.error("job cancelled: its secrets cannot be decrypted", runner_id=runner.id, job_id=job.id)
            return True
        assignment = JobAssignment(
            job_id=job.id, runner_id=runner.id, created_at=from_epoch(job.created_at), spec=job.spec
        )
        try:
            await self._agents.call(runner, "job", assignment)
        except ApiError as e:
            log.info(
                "job held: agent did not take it", runner_id=runner.id, job_id=job.id, code=e.code, reason=e.message
            )
            return False
        if await self._store.mark_delivered(job.id, runner.id) in ("cancelled", None):
            # Cancelled on the coordinator (or, routed, moved to another runner) while the push was in flight:
            # the agent has it now, so tell it.
            try:
                await self._agents.call(runner, "cancel", CancelRequest(job_id=job.id))
            except ApiError as e:
                log.warning("could not pass a cancel on to the agent", job_id=job.id, code=e.code)
        return True

    async def close(self) -> None:
        await self._tasks.close()
