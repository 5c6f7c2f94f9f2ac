"""The stores beside the registry (``base.Store``): what handlers and background tasks use, whatever the engine.

Each engine implements every protocol here: SQLite (the embedded default; ``coordinator.store.fleet``,
``coordinator.store.metrics``, ``coordinator.store.logs``, ``coordinator.audit.SqliteAuditStorage``) and
PostgreSQL (``coordinator.store.postgres``). ``coordinator.store.factory`` builds one of each for the configured
engine; nothing else names an engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from coordinator.audit import Record
    from coordinator.store.base import JobRecord, QueueState, StatusChange
    from coordinator.store.chunks import Dropped
    from coordinator.store.fleet import FleetJob, JobQuery, JobRow
    from coordinator.store.logs import LogEntry, LogFilter, LogPage
    from coordinator.store.metrics import Compaction, History, JobTiming
    from shared.models import AuditEntry, MetricSample


class FleetStore(Protocol):
    """Jobs submitted to the fleet (``POST /api/jobs``): the held pool and their assignment to runners."""

    async def insert(self, job: FleetJob) -> None: ...
    async def get(self, job_id: str) -> FleetJob | None: ...
    async def held(self, limit: int, after: int = 0) -> list[FleetJob]:
        """Held jobs, oldest first, from just after the one numbered ``after``."""
        ...

    async def held_by_tag_set(self) -> dict[str, int]: ...
    async def open_counts(self) -> dict[str, int]:
        """Queued and running jobs by runner (what takes a runner's slots)."""
        ...

    async def assign(self, job: FleetJob, runner_id: str, now: float) -> tuple[JobRecord, QueueState] | None:
        """Give a held job to ``runner_id`` (its job-index row is written); ``None`` if it is no longer held."""
        ...

    async def release(self, runner_id: str) -> list[str]:
        """Put the runner's routed jobs that no agent has taken back in the pool; returns their ids."""
        ...

    async def forget_runner(self, runner_id: str) -> int: ...
    async def cancel_held(self, job_id: str, reason: str, now: float) -> StatusChange | None: ...
    async def list(self, query: JobQuery, limit: int, offset: int) -> tuple[list[JobRow], int]: ...


class MetricsStore(Protocol):
    """Metric history: load samples, their rollups, uptime, and the counts a Prometheus scrape reads."""

    async def add_samples(self, runner_id: str, samples: Sequence[MetricSample], now: float) -> int: ...
    async def add_sample_batch(self, batch: Sequence[tuple[str, Sequence[MetricSample], float]]) -> int: ...
    async def history(self, runner_id: str, start: float, end: float, resolution: int) -> History | None: ...
    async def uptime_percentage(self, runner_id: str, registered_at: float, now: float) -> float: ...
    async def compact_forever(self, interval: float) -> None: ...
    async def compact(self, now: float) -> Compaction: ...
    async def registry_counts(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]: ...
    async def job_timings(self, job_ids: Sequence[str]) -> list[JobTiming]: ...
    async def event_mark(self, runner_id: str) -> int:
        """The runner's event high-water mark (0 if unknown)."""
        ...


class LogStore(Protocol):
    """Log queries (entries are written by the registry's event application, in the same transaction)."""

    async def page(self, runner_id: str, where: LogFilter, limit: int, oldest_first: bool) -> LogPage: ...
    async def after(self, runner_id: str, where: LogFilter, seq: int, limit: int = ...) -> list[LogEntry]: ...
    async def last_seq(self, runner_id: str) -> int: ...
    async def enforce(self, max_per_job: int | None, max_total: int | None, jobs: Iterable[str] | None) -> Dropped:
        """Delete whole chunks, oldest first, until the limits hold (``jobs``: only these; ``None``: all)."""
        ...


class AuditStorage(Protocol):
    """Where the audit trail (``coordinator.audit.AuditLog``, which queues and batches) keeps its entries."""

    async def first_used(self) -> set[str]:
        """The principals that have a first-use entry already."""
        ...

    async def append(self, records: Sequence[Record]) -> None:
        """Store entries, in order, in one transaction."""
        ...

    async def prune(self, before: float) -> int:
        """Delete the entries older than ``before``; how many went."""
        ...

    async def query(
        self, since: float | None, until: float | None, principal: str | None, limit: int, offset: int
    ) -> tuple[list[AuditEntry], int]:
        """Newest first, and how many match."""
        ...
