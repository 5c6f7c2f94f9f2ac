"""Records the store keeps and the protocol every store implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.models import AgentEvent, CurrentLoad, JobSubmission


@dataclass
class RunnerRecord:
    id: str
    name: str
    type: str
    status: str
    host: str
    port: int
    token: str
    registered_at: float
    last_seen: float
    heartbeat_interval: float
    capabilities: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    load: CurrentLoad = field(default_factory=CurrentLoad)
    last_heartbeat: float | None = None
    updated_at: float | None = None
    wire: str | None = field(default=None, compare=False, repr=False)
    """The record as the API shows it, serialised once (``coordinator.api.views.runner_json``); a record is
    never changed in place (a write makes a new one), so this stays true."""


@dataclass
class StepRecord:
    index: int
    name: str
    status: str
    exit_code: int | None = None
    started_at: float | None = None
    completed_at: float | None = None


@dataclass
class AttemptRecord:
    attempt: int
    status: str
    exit_code: int | None = None
    reason: str | None = None
    started_at: float | None = None
    completed_at: float | None = None


@dataclass
class JobRecord:
    id: str
    runner_id: str
    spec: JobSubmission
    status: str
    created_at: float
    attempt: int = 0
    exit_code: int | None = None
    reason: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    delivered: bool = False
    steps: list[StepRecord] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)


@dataclass
class StatusChange:
    """A runner or job whose status one store operation changed (for live events)."""

    kind: str  # "runner" | "job"
    id: str
    runner_id: str
    old_status: str | None
    new_status: str
    at: float


@dataclass
class QueueState:
    queued_ahead: int
    running_started: list[float]


@dataclass
class RunnerFilter:
    status: str | None = None
    type: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Statistics:
    total_jobs_executed: int
    successful_jobs: int
    failed_jobs: int
    average_execution_time: float


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def storage_problem(self) -> str | None:
        """Why the store cannot write now (disk full, read-only), or None; re-checked while there is one."""
        ...

    # runners
    async def insert_runner(self, runner: RunnerRecord) -> None: ...
    async def get_runner(self, runner_id: str) -> RunnerRecord | None: ...
    async def token_owner(self, token: str) -> str | None: ...
    async def list_runners(
        self, filters: RunnerFilter, limit: int | None, offset: int
    ) -> tuple[list[RunnerRecord], int]: ...
    async def update_runner(self, runner_id: str, changes: dict[str, Any], now: float) -> RunnerRecord | None: ...
    async def delete_runner(self, runner_id: str) -> bool: ...
    async def record_heartbeat(
        self, runner_id: str, load: CurrentLoad, status: str, interval: float, now: float
    ) -> StatusChange | None: ...
    async def flush_heartbeats(self) -> int:
        """Write what ``record_heartbeat`` deferred (a store may batch heartbeats); returns how many."""
        ...

    async def mark_stale(self, now: float, multiplier: float) -> list[StatusChange]: ...
    async def statistics(self, runner_id: str) -> Statistics: ...

    # jobs
    async def insert_job(self, job: JobRecord) -> QueueState:
        """Store a new job; returns what was queued and running on its runner just before it."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None: ...
    async def list_jobs(
        self, runner_id: str, status: str | None, limit: int | None, offset: int
    ) -> tuple[list[JobRecord], int]: ...
    async def undelivered_jobs(self, runner_id: str, limit: int) -> list[JobRecord]: ...
    async def mark_delivered(self, job_id: str, runner_id: str) -> str | None: ...
    async def held_job_count(self, runner_id: str) -> int:
        """Jobs the coordinator holds for the runner: queued, not yet taken by its agent."""
        ...

    async def open_job_count(self, runner_id: str) -> int: ...
    async def cancel_open_jobs(self, runner_id: str, reason: str, now: float) -> list[StatusChange]: ...
    async def cancel_held_job(self, job_id: str, reason: str, now: float) -> StatusChange | None: ...

    # agent events
    async def apply_events(self, runner_id: str, events: list[AgentEvent]) -> tuple[int, list[StatusChange]] | None:
        """Apply events past the runner's high-water mark; ``None`` if the runner does not exist."""
        ...
