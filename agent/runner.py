"""One job through an executor: attempts, steps in order, timeouts, cancellation, the final report.

The job's outcome is reported exactly once, shielded from cancellation, after the executor's cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

import structlog

from agent import logsink
from agent.config import AgentConfig
from agent.executors.base import ExecutorError, JobContext, JobSteps, OutputSink, StepContext, StepFailed
from agent.shipping import Outbox
from agent.store import StoredJob
from shared import protocol
from shared.timeutil import isoformat, utcnow

log = structlog.get_logger(__name__)

# Variables a step inherits from the agent's own environment; anything else (credentials the agent itself
# was started with, for instance) stays out of jobs.
INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SHELL", "TERM")


@dataclass
class Outcome:
    status: str  # completed | failed | timed_out | cancelled
    exit_code: int | None = None
    reason: str | None = None


def _now() -> str:
    return isoformat(utcnow())


class JobRunner:
    def __init__(self, config: AgentConfig, executor: JobSteps, outbox: Outbox) -> None:
        self.config = config
        self.executor = executor
        self.outbox = outbox
        self._logs: dict[tuple[str, int], logsink.JobLog] = {}

    async def run(self, job: StoredJob, cancel_reason: dict[str, str]) -> Outcome:
        """Run every attempt the job has left. ``cancel_reason[job_id]`` is set before the task is cancelled."""
        spec = job.assignment.spec
        bound = structlog.get_logger(__name__).bind(runner_id=job.assignment.runner_id, job_id=job.job_id)
        last_attempt = spec.retry_count + 1
        attempt = max(job.attempt, 0)
        resume, job.resume_step = job.resume_step, None
        if resume is not None:
            attempt -= 1  # the attempt the previous agent process was running goes on
        outcome = Outcome("failed", reason="no attempt ran")
        while attempt < last_attempt:
            attempt += 1
            outcome = await self._attempt(job, attempt, cancel_reason, bound, resume)
            resume = None
            final = outcome.status in ("completed", "cancelled") or attempt >= last_attempt
            await self._report(job, attempt, outcome, final)
            if final:
                break
            bound.info("job attempt failed; retrying", attempt=attempt, status=outcome.status)
        return outcome

    async def reattach(self, job: StoredJob) -> int | None:
        """After a restart: the step to go on with when the executor re-attached to the job's running attempt."""
        try:
            return await self.executor.reattach(self._context(job, job.attempt))
        except ExecutorError as e:
            log.warning("could not re-attach to the job", job_id=job.job_id, error=str(e))
            return None

    def _context(self, job: StoredJob, attempt: int) -> JobContext:
        spec = job.assignment.spec
        return JobContext(
            job_id=job.job_id,
            runner_id=job.assignment.runner_id,
            name=spec.name,
            attempt=attempt,
            workspace=self.config.workspaces / job.job_id / str(attempt),
            environment=self._job_environment(job, attempt),
            image=spec.image,
            timeout=spec.timeout or self.config.job_timeout,
            steps=list(spec.steps),
        )

    async def _attempt(
        self, job: StoredJob, attempt: int, cancel_reason: dict[str, str], bound: Any, resume: int | None = None
    ) -> Outcome:
        """One attempt; with ``resume``, the one a previous agent process started, from that step on (its start,
        and the steps before it, were reported by that process)."""
        spec = job.assignment.spec
        context = self._context(job, attempt)
        logs = self._open_log(job, attempt)
        if resume is None:
            await self.outbox.transition(
                job.job_id,
                "running",
                attempt,
                protocol.job_event(job.job_id, attempt, "running", _now()),
                self._system(job.job_id, attempt, "info", f"Job started: {job.job_id} (attempt {attempt})"),
            )
        timeout = spec.timeout or self.config.job_timeout
        outcome: Outcome | None = None
        try:
            async with asyncio.timeout(timeout) as deadline:
                if resume is None:
                    await self.executor.setup(context)
                outcome = await self._steps(context, job, bound, deadline, first=resume or 0, announced=resume)
        except TimeoutError:
            outcome = Outcome("timed_out", reason=f"job exceeded its timeout of {timeout}s")
        except ExecutorError as e:
            outcome = Outcome("failed", reason=str(e))
        except asyncio.CancelledError:
            reason = cancel_reason.get(job.job_id)
            if reason is None and logs.failure is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # a deliberate cancel is this job's outcome, not the task's end
            outcome = Outcome("cancelled", reason=reason) if reason else Outcome("failed", reason=logs.failure)
        finally:
            self._logs.pop((job.job_id, attempt)).close()  # the held tail goes out before the report
            policy = self.config.cleanup_policy
            succeeded = outcome is not None and outcome.status == "completed"
            if policy == "always" or (policy == "on_success" and succeeded):
                await asyncio.shield(self._cleanup(context, bound))
        assert outcome is not None  # every path that gets here set it
        return outcome

    async def _steps(
        self,
        context: JobContext,
        job: StoredJob,
        bound: Any,
        deadline: asyncio.Timeout,
        first: int = 0,
        announced: int | None = None,
    ) -> Outcome:
        """The steps from ``first`` on; step ``announced`` was already reported as started."""
        for index, step in enumerate(job.assignment.spec.steps):
            if index < first:
                continue
            env = {**context.environment, **step.env, "RUSTCI_STEP_NAME": step.name}
            if index != announced:
                self.outbox.emit_nowait(
                    self._step_event(context, index, step.name, "running"),
                    self._system(context.job_id, context.attempt, "info", f"Step started: {step.name}", step.name),
                )
            started = time.monotonic()
            failure: str | None = None
            try:
                async with asyncio.timeout(self._step_bound(step.timeout)):
                    code: int | None = await self.executor.run_step(
                        context, StepContext(index, step, env), self._sink(context, step.name)
                    )
                status = "completed" if code == 0 else "failed"
            except TimeoutError:
                status, code = "timed_out", None
            except StepFailed as e:
                status, code, failure = "failed", e.exit_code, e.reason
            except (asyncio.CancelledError, ExecutorError) as e:
                # The job ends here; record the step as such before the error travels on.
                if isinstance(e, ExecutorError) or self._logs[(context.job_id, context.attempt)].failure:
                    ended = "failed"
                elif deadline.expired():
                    ended = "timed_out"  # the job's own timeout ended this step
                else:
                    ended = "cancelled"
                self._finish_step(context, index, step.name, ended, None, started)
                raise
            self._finish_step(context, index, step.name, status, code, started)
            bound.debug("step finished", step=step.name, status=status, exit_code=code)
            if status == "completed" or step.continue_on_error:
                continue
            if status == "timed_out":
                return Outcome("timed_out", reason=f"step '{step.name}' exceeded its timeout of {step.timeout}s")
            return Outcome(
                "failed", exit_code=code, reason=failure or f"step '{step.name}' failed with exit code {code}"
            )
        return Outcome("completed", exit_code=0)

    def _step_bound(self, timeout: int | None) -> float | None:
        """The runner's own bound on a step: its timeout, or for an executor that times steps itself a backstop
        past it (the executor ends the step and says so first; this only catches an executor that hangs)."""
        if timeout is None or not self.executor.times_steps:
            return timeout
        return timeout + self.config.kill_grace_period + 30

    def _finish_step(
        self, context: JobContext, index: int, name: str, status: str, code: int | None, started: float
    ) -> None:
        took = time.monotonic() - started
        level = "info" if status == "completed" else "error"
        detail = f" with exit code {code}" if code is not None else ""
        self.outbox.emit_nowait(
            self._step_event(context, index, name, status, code),
            self._system(context.job_id, context.attempt, level, f"Step {status}: {name}{detail} in {took:.3f}s", name),
        )

    async def _report(self, job: StoredJob, attempt: int, outcome: Outcome, final: bool) -> None:
        status = outcome.status if final else "queued"
        level = "info" if outcome.status == "completed" else "error"
        words = f"Job {outcome.status}: {job.job_id}"
        if outcome.reason:
            words += f" ({outcome.reason})"
        event = protocol.job_event(
            job.job_id, attempt, outcome.status, _now(), exit_code=outcome.exit_code, reason=outcome.reason, final=final
        )
        await asyncio.shield(
            self.outbox.transition(job.job_id, status, attempt, event, self._system(job.job_id, attempt, level, words))
        )

    async def _cleanup(self, context: JobContext, bound: Any) -> None:
        try:
            await self.executor.cleanup(context)
            # The attempt's workspace is ``<workspaces>/<job_id>/<attempt>``: once no attempt of the job is kept,
            # its directory goes too, so the workspaces directory does not fill with one empty entry per job.
            with contextlib.suppress(OSError):
                context.workspace.parent.rmdir()
        except Exception:
            bound.exception("workspace cleanup failed")

    def _job_environment(self, job: StoredJob, attempt: int) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k in INHERITED}
        builtin = {
            "CI": "true",
            "RUSTCI": "true",
            "RUSTCI_JOB_ID": job.job_id,
            "RUSTCI_JOB_NAME": job.assignment.spec.name,
            "RUSTCI_JOB_ATTEMPT": str(attempt),
            "RUSTCI_RUNNER_ID": job.assignment.runner_id,
        }
        spec = job.assignment.spec
        return {**inherited, **self.config.environment, **self.config.secrets, **spec.environment, **builtin}

    def _open_log(self, job: StoredJob, attempt: int) -> logsink.JobLog:
        """The attempt's output path: secrets masked and the size policy applied before anything is spooled."""
        spec = job.assignment.spec
        masked = [spec.environment[name] for name in spec.masked if name in spec.environment]
        masked += [step.env[name] for step in spec.steps for name in spec.masked if name in step.env]
        task = asyncio.current_task()  # the job's own task: failing on the log limit cancels the running step
        self._logs[(job.job_id, attempt)] = logs = logsink.JobLog(
            self.outbox,
            job.job_id,
            attempt,
            secrets=[*self.config.secrets.values(), *masked],
            limit=self.config.job_log_limit_bytes,
            tail=self.config.job_log_tail_bytes,
            fail_on_limit=spec.on_log_limit == "fail",
            on_failure=task.cancel if task is not None else lambda: None,
        )
        return logs

    def _sink(self, context: JobContext, step: str) -> OutputSink:
        return self._logs[(context.job_id, context.attempt)].sink(step)

    @staticmethod
    def _step_event(context: JobContext, index: int, name: str, status: str, code: int | None = None) -> str:
        return protocol.step_event(context.job_id, context.attempt, index, name, status, _now(), exit_code=code)

    @staticmethod
    def _system(job_id: str, attempt: int, level: str, message: str, step: str | None = None) -> str:
        return protocol.log_event(_now(), level, message, job_id=job_id, step=step, attempt=attempt)
