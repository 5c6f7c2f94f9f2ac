"""The agent's job queue: FIFO, at most ``max_concurrent_jobs`` running, durable across restarts.

Jobs arrive from the coordinator, are stored before they are acknowledged, and wait here as ``queued``
until a slot is free. The limit can change live; raising it starts waiting jobs at once.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from agent.runner import JobRunner, Outcome
from agent.shipping import Outbox
from agent.store import AgentStore, StoredJob
from shared import protocol
from shared.errors import JobNotCancellable, JobNotFound
from shared.models import TERMINAL_JOB_STATUSES, JobAssignment
from shared.tasks import TaskSet
from shared.timeutil import isoformat, utcnow

log = structlog.get_logger(__name__)


class Supervisor:
    def __init__(self, store: AgentStore, outbox: Outbox, runner: JobRunner, max_concurrent_jobs: int) -> None:
        self._store = store
        self._outbox = outbox
        self._runner = runner
        self.max_concurrent_jobs = max_concurrent_jobs
        self._queue: deque[StoredJob] = deque()
        self._running: dict[str, asyncio.Task[Outcome]] = {}
        self._cancel_reason: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._tasks = TaskSet("jobs")
        self.accepting = True

    # --- what the API and the daemon call -------------------------------------------------------------------

    @property
    def active_jobs(self) -> int:
        return len(self._running)

    @property
    def queued_jobs(self) -> int:
        return len(self._queue)

    async def assign(self, assignment: JobAssignment) -> str:
        """Take a job from the coordinator (idempotent by job id); returns its current status."""
        job, new = await self._store.add_job(assignment)
        if new:
            self._queue.append(job)
            self._changed.set()
        return job.status

    async def resume(self, recover: Callable[[str], Awaitable[int]]) -> None:
        """After a start: queue what was waiting; a job that was running when the agent died goes on where it was
        when its executor can re-attach to it (its pod still runs), else it is retried if it has attempts left,
        else it fails with the reason ``agent restarted``. A job this supervisor already holds (queued or running)
        is left as it is: the open job in the store is that same job, and starting it again would run its attempt
        twice over one pod and one log."""
        for job in await self._store.open_jobs():
            if self._holds(job.job_id):
                log.warning("not resuming a job that is already held", job_id=job.job_id)
                continue
            if job.status == "running":
                job.resume_step = await self._runner.reattach(job)
                if job.resume_step is not None:
                    log.info("re-attached to a job left running", job_id=job.job_id, step=job.resume_step)
                    self._queue.append(job)
                    continue
                ended = await recover(job.job_id)
                if ended:
                    log.warning("ended processes left by the previous agent", job_id=job.job_id, processes=ended)
                await self._interrupted(job)
                if job.attempt > job.assignment.spec.retry_count:
                    continue
            self._queue.append(job)
        self._changed.set()

    def _holds(self, job_id: str) -> bool:
        return job_id in self._running or any(queued.job_id == job_id for queued in self._queue)

    async def _interrupted(self, job: StoredJob) -> None:
        final = job.attempt > job.assignment.spec.retry_count
        reason = "agent restarted"
        log.warning("job was running when the agent stopped", job_id=job.job_id, attempt=job.attempt, final=final)
        await self._outbox.transition(
            job.job_id,
            "failed" if final else "queued",
            job.attempt,
            protocol.job_event(job.job_id, job.attempt, "failed", isoformat(utcnow()), reason=reason, final=final),
        )

    async def cancel(self, job_id: str, reason: str, wait: float = 1.0) -> str:
        """Cancel one job: a queued one leaves the queue, a running one is ended (its whole process tree).
        Returns the job's status afterwards (``cancelling`` while its processes are still being ended)."""
        task = self._running.get(job_id)
        if task is not None:
            self._cancel_reason.setdefault(job_id, reason)
            task.cancel()
            await asyncio.wait([task], timeout=wait)
            return "cancelled" if task.done() else "cancelling"
        queued = next((job for job in self._queue if job.job_id == job_id), None)
        if queued is not None:
            self._queue.remove(queued)
            await self._outbox.transition(
                job_id,
                "cancelled",
                queued.attempt,
                protocol.job_event(job_id, queued.attempt, "cancelled", isoformat(utcnow()), reason=reason, final=True),
            )
            return "cancelled"
        known = await self._store.job_status(job_id)
        if known is None:
            raise JobNotFound(job_id)
        status = known[0]
        if status == "cancelled":
            return status  # cancelling twice is harmless
        if status in TERMINAL_JOB_STATUSES:
            raise JobNotCancellable(f"Job '{job_id}' already finished as {status}", job_id=job_id, status=status)
        return status

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no job runs (for a graceful stop); ``False`` if some still run after ``timeout``."""
        running = list(self._running.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=timeout)
            return not pending
        return True

    def set_limit(self, max_concurrent_jobs: int) -> None:
        self.max_concurrent_jobs = max_concurrent_jobs
        self._changed.set()

    # --- the loop ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            while self.accepting and self._queue and len(self._running) < self.max_concurrent_jobs:
                job = self._queue.popleft()
                if job.job_id in self._running:  # one task per job: its attempt owns the job's pod, log and cursor
                    log.error("job is already running; not starting it twice", job_id=job.job_id)
                    continue
                task = self._tasks.spawn(self._run_guarded(job), job.job_id)
                self._running[job.job_id] = task
                task.add_done_callback(functools.partial(self._finished, job.job_id))
            await self._changed.wait()
            self._changed.clear()

    async def _run_guarded(self, job: StoredJob) -> Outcome:
        """Run one job; an error nothing below expected (a bug, a value the executor cannot take) ends the job
        ``failed`` with its reason instead of leaving it ``running`` with nothing behind it: the last line of
        defence, so no job hangs whatever goes wrong while starting or running its steps."""
        try:
            return await self._runner.run(job, self._cancel_reason)
        except Exception as e:
            reason = f"the agent could not run the job: {type(e).__name__}: {e}"
            log.exception("job ended by an unexpected error", job_id=job.job_id)
            known = await self._store.job_status(job.job_id)
            attempt = max(known[1] if known else job.attempt, 1)
            at = isoformat(utcnow())
            event = protocol.job_event(job.job_id, attempt, "failed", at, reason=reason, final=True)
            line = protocol.log_event(
                at, "error", f"Job failed: {job.job_id} ({reason})", job_id=job.job_id, attempt=attempt
            )
            await asyncio.shield(self._outbox.transition(job.job_id, "failed", attempt, event, line))
            return Outcome("failed", reason=reason)

    def _finished(self, job_id: str, _task: object = None) -> None:
        self._running.pop(job_id, None)
        self._cancel_reason.pop(job_id, None)
        self._changed.set()

    def resume_accepting(self) -> None:
        self.accepting = True
        self._changed.set()

    async def drain(self, timeout: float, reason: str = "agent shutting down") -> None:
        """Stop starting jobs, let running ones finish for up to ``timeout`` seconds, then cancel the rest.
        Queued jobs stay queued in the store and run after the next start."""
        self.accepting = False
        if self._running:
            log.info("waiting for running jobs", count=len(self._running), timeout=timeout)
        await self.wait_idle(timeout)
        await self.cancel_running(reason)

    async def cancel_running(self, reason: str) -> None:
        running = dict(self._running)
        for job_id, task in running.items():
            self._cancel_reason[job_id] = reason
            task.cancel()
        if running:
            await asyncio.wait(running.values())

    async def close(self) -> None:
        await self._tasks.close()
