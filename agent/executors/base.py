"""The executor protocol and what it is given.

Contract every executor keeps:

- ``setup(job)`` prepares whatever the job's steps run in (workspace, container, pod). It may fail by raising
  :class:`ExecutorError`; ``cleanup`` is still called afterwards.
- ``run_step(job, step, output)`` runs one step to completion, passing every line the step writes to
  ``output`` as it arrives, and returns the step's exit code (non-zero is a *failure*, not an exception; a
  step ended by a signal returns 128 + the signal number). An infrastructure problem raises ExecutorError.
- Cancellation is distinct from failure: when the task running ``run_step`` is cancelled (job timeout, user
  cancel, shutdown), the executor ends everything the step started — the whole process tree, container or
  pod — first politely (SIGTERM), then after ``kill_grace_period`` by force, and only then lets
  ``CancelledError`` propagate. Nothing the step started outlives it.
- ``cleanup(job)`` removes what ``setup`` made. It is idempotent and safe after a failed or partial setup.
- ``recover(job_id)`` ends whatever a previous agent process left running for the job (after a crash of
  the agent) and returns how many things it ended. Safe to call when nothing is left.
- Executors never block the event loop: blocking SDKs run in threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from shared.models import StepSpec

Stream = Literal["stdout", "stderr"]
OutputSink = Callable[[Stream, str], None]
"""Receives each complete line (decoded, newline stripped). Must not block."""


class ExecutorError(Exception):
    """The executor could not do its part (not the job's fault): reported as the job's failure reason."""


@dataclass
class JobContext:
    job_id: str
    runner_id: str
    name: str
    attempt: int
    workspace: Path
    environment: dict[str, str] = field(default_factory=dict)
    image: str | None = None  # the job's own image, for executors that run containers


@dataclass
class StepContext:
    index: int
    spec: StepSpec
    environment: dict[str, str]


class Executor(Protocol):
    name: str

    async def setup(self, job: JobContext) -> None: ...

    async def run_step(self, job: JobContext, step: StepContext, output: OutputSink) -> int: ...

    async def cleanup(self, job: JobContext) -> None: ...

    async def recover(self, job_id: str) -> int: ...
