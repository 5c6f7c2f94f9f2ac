"""Records the store keeps and the protocol every store implements."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
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


@dataclass(frozen=True, slots=True)
class PendingHeartbeat:
    """A heartbeat a store recorded and has not written yet (stores batch heartbeats that keep the status)."""

    load_json: str
    load: CurrentLoad
    interval: float
    at: float

    def applied(self, runner: RunnerRecord) -> RunnerRecord:
        """The record as it is once this heartbeat is written (``last_seen`` never moves back)."""
        return replace(
            runner,
            load=self.load,
            heartbeat_interval=self.interval,
            last_seen=max(runner.last_seen, self.at),
            last_heartbeat=self.at,
            wire=None,
        )


@dataclass(frozen=True)
class RunnerChanges:
    """What one update changes in a runner's record; ``None`` leaves a field as it is."""

    name: str | None = None
    host: str | None = None
    port: int | None = None
    status: str | None = None
    capabilities: list[str] | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None
    token: str | None = None
    heartbeat_interval: float | None = None
    last_seen: float | None = None

    def names(self) -> list[str]:
        """The fields this update sets, in declaration order."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def stored(self) -> dict[str, Any]:
        """The fields this update sets as every engine stores them (lists and objects as JSON text)."""
        values = {name: getattr(self, name) for name in self.names()}
        return {name: json.dumps(v) if isinstance(v, list | dict) else v for name, v in values.items()}

    @property
    def changes_membership(self) -> bool:
        """Whether the update may change which runner filters the record matches."""
        return self.status is not None or self.tags is not None


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

    @property
    def storage_errors(self) -> int:
        """Operations that failed because the storage refused them, since start (for metrics)."""
        ...

    # runners
    async def insert_runner(self, runner: RunnerRecord) -> None: ...
    async def get_runner(self, runner_id: str) -> RunnerRecord | None: ...
    async def token_owner(self, token: str) -> str | None: ...
    async def list_runners(
        self, filters: RunnerFilter, limit: int | None, offset: int
    ) -> tuple[list[RunnerRecord], int]: ...
    async def update_runner(self, runner_id: str, changes: RunnerChanges, now: float) -> RunnerRecord | None: ...
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
