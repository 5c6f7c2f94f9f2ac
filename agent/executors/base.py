"""The executor protocol and what it is given.

Contract every executor keeps:

- It is built as ``Executor(config)`` from the agent's own settings object (the registry in
  :mod:`agent.executors` does it); its own settings are one group of that config (``docker:``,
  ``kubernetes:``, ``native:``). ``configure(changed)`` is called after a live settings change (SIGHUP,
  ``PUT /config``) with the names of the top-level settings that changed; the executor reads the config
  again for what it cached.
- ``start(runner_id, open_jobs)`` runs once when the agent starts, before any job: a backend that made things
  outside the agent (pods) removes the ones of this runner whose job is not among ``open_jobs``. ``check()``
  raises :class:`ExecutorError`
  while the executor cannot run jobs (its engine or cluster is unreachable); ``health()`` gives the checks it
  adds to the runner's health (``docker_daemon``, ``kubernetes_api``, ``resource_limits``) and
  ``capabilities()`` what it adds to the runner's capabilities, with whether each is available now.
- ``setup(job)`` prepares whatever the job's steps run in (workspace, container, pod). It may fail by raising
  :class:`ExecutorError`; ``cleanup`` is still called afterwards.
- ``run_step(job, step, output)`` runs one step to completion, passing every line the step writes to
  ``output`` as it arrives, and returns the step's exit code (non-zero is a *failure*, not an exception; a
  step ended by a signal returns 128 + the signal number). An infrastructure problem, including a step that
  cannot even start (a NUL byte in its environment, a script the host refuses), raises ExecutorError. An
  executor that enforces the step's timeout itself (``times_steps``) raises ``TimeoutError`` when it ran out.
- A step's script is handed over as a file (or stdin), never as a command-line argument, so a script of up to
  the documented 1,000,000 characters runs on every executor.
- Cancellation is distinct from failure: when the task running ``run_step`` is cancelled (job timeout, user
  cancel, shutdown), the executor ends everything the step started — the whole process tree, container or
  pod — first politely (SIGTERM), then after ``kill_grace_period`` by force, and only then lets
  ``CancelledError`` propagate. Nothing the step started outlives it.
- ``cleanup(job)`` removes what ``setup`` made. It is idempotent and safe after a failed or partial setup.
- ``reattach(job)`` is asked, after a restart of the agent, for an attempt that was running when the previous
  agent process ended: an executor whose work outlives the agent (a pod) returns the index of the step to go
  on with, and its next ``run_step`` calls follow that step's output from the last line already delivered;
  ``None`` means there is nothing to re-attach to.
- ``recover(job_id)`` ends whatever a previous agent process left running for the job (after a crash of
  the agent) and returns how many things it ended. Safe to call when nothing is left.
- Executors never block the event loop: blocking SDKs run in threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

from shared.models import CapabilityState, HealthCheck, RunnerType, StepSpec

if TYPE_CHECKING:
    from agent.config import AgentConfig

Stream = Literal["stdout", "stderr"]

STEP_SCRIPT = ".rustci-step.sh"
"""Name of the file a step's script is written to (in the attempt's workspace, or the pod's script volume)."""


class OutputSink(Protocol):
    """Where a step's output goes, line by line."""

    def __call__(self, stream: Stream, line: str, /) -> None:
        """Take one complete line (decoded, newline stripped). Must not block."""

    async def drain(self) -> None:
        """Wait while the log pipeline is far behind; executors call it between chunks of a step's output, so a
        step printing faster than its log can be written is slowed down instead of piling up in memory."""

    async def flush(self) -> None:
        """Return once every line taken so far is durable (in the agent's outbox on disk): an executor that
        records how far it has read (to re-attach after a restart) records it after this."""


class ExecutorError(Exception):
    """The executor could not do its part (not the job's fault): reported as the job's failure reason."""


class StepFailed(Exception):
    """The step ended with ``exit_code`` for a reason the executor knows better than the code says (the kernel
    killed it for being over its memory limit): the step fails with that code, and the job with ``reason``."""

    def __init__(self, exit_code: int, reason: str) -> None:
        super().__init__(reason)
        self.exit_code = exit_code
        self.reason = reason


@dataclass
class JobContext:
    job_id: str
    runner_id: str
    name: str
    attempt: int
    workspace: Path
    environment: dict[str, str] = field(default_factory=dict)
    image: str | None = None  # the job's own image, for executors that run containers
    timeout: int | None = None  # the job's own bound on its run time, in seconds
    steps: list[StepSpec] = field(default_factory=list)  # every step of the job, for executors that plan ahead


@dataclass
class StepContext:
    index: int
    spec: StepSpec
    environment: dict[str, str]


class JobSteps(Protocol):
    """The part of an executor that runs a job (what the job runner needs, and what the metrics wrap)."""

    @property
    def name(self) -> str: ...

    @property
    def times_steps(self) -> bool: ...

    async def setup(self, job: JobContext) -> None: ...

    async def run_step(self, job: JobContext, step: StepContext, output: OutputSink) -> int: ...

    async def cleanup(self, job: JobContext) -> None: ...

    async def reattach(self, job: JobContext) -> int | None: ...


class Executor(Protocol):
    name: ClassVar[str]
    runner_type: ClassVar[RunnerType]
    """The runner type this executor registers as (the spec's ``docker``, ``kubernetes``, ``native``, ``local``)."""
    times_steps: ClassVar[bool]
    """True when the executor enforces each step's timeout itself and raises TimeoutError when it runs out."""

    kill_grace_period: float

    def __init__(self, config: AgentConfig) -> None: ...

    def configure(self, changed: set[str]) -> None: ...

    async def start(self, runner_id: str, open_jobs: set[str]) -> None: ...

    async def check(self) -> None: ...

    async def health(self) -> dict[str, HealthCheck]: ...

    async def capabilities(self) -> dict[str, CapabilityState]: ...

    async def metadata(self) -> dict[str, str]: ...

    async def setup(self, job: JobContext) -> None: ...

    async def run_step(self, job: JobContext, step: StepContext, output: OutputSink) -> int: ...

    async def cleanup(self, job: JobContext) -> None: ...

    async def reattach(self, job: JobContext) -> int | None: ...

    async def recover(self, job_id: str) -> int: ...


class ExecutorDefaults:
    """The no-op parts of the protocol, for a backend that has none of them (inherit and override)."""

    times_steps: ClassVar[bool] = False

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.kill_grace_period = config.kill_grace_period
        self.max_line = config.max_log_line_bytes

    def configure(self, changed: set[str]) -> None:
        self.kill_grace_period = self.config.kill_grace_period

    async def start(self, runner_id: str, open_jobs: set[str]) -> None:
        return None

    async def check(self) -> None:
        return None

    async def health(self) -> dict[str, HealthCheck]:
        return {}

    async def capabilities(self) -> dict[str, CapabilityState]:
        return {}

    async def metadata(self) -> dict[str, str]:
        return {}

    async def reattach(self, job: JobContext) -> int | None:
        return None
