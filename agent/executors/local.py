"""Local executor: each step is ``/bin/sh`` running the step's script in the job's workspace on this host, as the
agent's own user, with no isolation and no limits (what a developer's ``make run`` uses). The native executor
(``agent.executors.native``) is this plus enforced ``resource_limits`` and an optional ``run_as`` user.

Every step runs in its own session (``setsid``), so its process group holds every process it starts,
background children and ``nohup`` ones included; ending the step signals the whole group. When the step's
shell exits, whatever it left running in the background is killed too: a finished step leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import psutil
import structlog

from agent.executors.base import ExecutorDefaults, ExecutorError, JobContext, OutputSink, StepContext, Stream
from agent.executors.lines import LineSplitter
from agent.executors.scripts import check_environment, write_step_script

log = structlog.get_logger(__name__)

READ_CHUNK = 64 * 1024
# After the step's shell exits, how long its pipes may stay open (held by a process that left the group).
PIPE_DRAIN_TIMEOUT = 2.0


class LocalExecutor(ExecutorDefaults):
    name = "local"
    runner_type = "local"

    async def setup(self, job: JobContext) -> None:
        try:
            # The usual case, a workspace that does not exist yet, is a couple of mkdir calls: done inline
            # rather than paying a thread hand-off; a leftover tree to clear goes to a thread.
            try:
                job.workspace.mkdir(parents=True, mode=0o700)
            except FileExistsError:
                await asyncio.to_thread(_fresh_dir, job.workspace)
        except OSError as e:
            raise ExecutorError(f"cannot create workspace {job.workspace}: {e.strerror or e}") from e

    async def run_step(self, job: JobContext, step: StepContext, output: OutputSink) -> int:
        cwd = job.workspace / step.spec.working_directory if step.spec.working_directory else job.workspace
        check_environment(step.environment, step.spec.name)
        script = job.workspace / await write_step_script(job.workspace, step)
        try:
            cwd.mkdir(parents=True, exist_ok=True)
            process = await asyncio.create_subprocess_exec(
                "/bin/sh",
                str(script),
                cwd=cwd,
                env=step.environment,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                **self._spawn_options(job),
            )
        except Exception as e:  # OSError, ValueError (a NUL byte), a failing preexec hook...: the step cannot start
            detail = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise ExecutorError(f"cannot start step '{step.spec.name}': {detail}") from e
        assert process.stdout is not None and process.stderr is not None
        readers = [
            asyncio.create_task(self._pump(process.stdout, "stdout", output), name="native:stdout"),
            asyncio.create_task(self._pump(process.stderr, "stderr", output), name="native:stderr"),
        ]
        try:
            code = await process.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self._terminate(job, process))
            await _finish_readers(readers)
            raise
        _kill_group(process.pid, signal.SIGKILL)  # background leftovers of a finished step
        self._step_ended(job)
        await _finish_readers(readers)
        code = code if code >= 0 else 128 - code
        self._check_step(job, step, code)
        return code

    # --- what the native executor adds (no-ops here) ------------------------------------------------------------

    def _spawn_options(self, job: JobContext) -> dict[str, Any]:
        """Extra keyword arguments for starting a step's process (limits, user)."""
        return {}

    def _step_ended(self, job: JobContext) -> None:
        """The step's shell exited: end whatever of the job is still running."""

    def _check_step(self, job: JobContext, step: StepContext, code: int) -> None:
        """Raise StepFailed when the step was ended for a reason of the executor's (over its memory limit)."""

    async def _pump(self, stream: asyncio.StreamReader, name: Stream, output: OutputSink) -> None:
        splitter = LineSplitter(self.max_line)
        while chunk := await stream.read(READ_CHUNK):
            for line in splitter.feed(chunk):
                output(name, line)
            await output.drain()  # backpressure: wait while the log pipeline is far behind
        for line in splitter.flush():
            output(name, line)

    async def _terminate(self, job: JobContext, process: asyncio.subprocess.Process) -> None:
        """SIGTERM to the step's whole process group, SIGKILL after the grace period."""
        _kill_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.kill_grace_period)
        except TimeoutError:
            pass
        _kill_group(process.pid, signal.SIGKILL)
        self._step_ended(job)
        await process.wait()

    async def cleanup(self, job: JobContext) -> None:
        # An empty workspace (steps that wrote nothing) goes with one rmdir; a tree goes in a thread.
        try:
            job.workspace.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            await asyncio.to_thread(shutil.rmtree, job.workspace, True)

    async def recover(self, job_id: str) -> int:
        """Kill every process that carries this job's id in its environment (left by a crashed agent)."""
        return await asyncio.to_thread(_kill_job_processes, job_id)


def _kill_job_processes(job_id: str) -> int:
    marker = ("RUSTCI_JOB_ID", job_id)
    victims = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and marker in proc.environ().items():
                victims.append(proc)
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(victims, timeout=5)
    return len(victims)


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _finish_readers(readers: list[asyncio.Task[None]]) -> None:
    done, pending = await asyncio.wait(readers, timeout=PIPE_DRAIN_TIMEOUT)
    for task in pending:
        log.warning("step output still open after the step ended; a process escaped its group", task=task.get_name())
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for task in done:
        task.result()
