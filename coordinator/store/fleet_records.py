"""The routed jobs' records, as every engine's fleet-job store reads and writes them (the tables are described in
``coordinator.store.fleet``).

A row is anything indexed by column name (``coordinator.store.rows.Row``): the conversions here are the same for
every engine, and so is how a spec is stored (``coordinator.store.rows.stored_spec``: masked values sealed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from coordinator.sealing import Sealer
from coordinator.store.rows import Row
from shared.models import JobSubmission

OPEN_STATUSES = ("queued", "running")
"""Job statuses that take a runner's slot."""

ALL_JOBS = """
SELECT id, name, status, runner_id, created_at, started_at, completed_at, exit_code, tags, type FROM (
    SELECT j.id, j.name, j.status, j.runner_id, j.created_at, j.started_at, j.completed_at, j.exit_code,
           COALESCE(f.tags, '[]') AS tags, f.type AS type
    FROM jobs j LEFT JOIN fleet_jobs f ON f.id = j.id
    UNION ALL
    SELECT id, name, status, NULL, created_at, NULL, completed_at, NULL, tags, type
    FROM fleet_jobs WHERE runner_id IS NULL
) AS every_job
"""
"""Every ``jobs`` row (routed or not) plus the held routed jobs, as ``GET /api/jobs`` lists them (portable SQL)."""


def stored_tags(tags: list[str]) -> str:
    """The ``tags`` column: the distinct tags, sorted, as a JSON array."""
    return json.dumps(sorted(set(tags)))


def tag_set(tags: list[str]) -> str:
    """The canonical name of a set of tags (sorted, comma-separated; ``""`` for none)."""
    return ",".join(sorted(set(tags)))


@dataclass
class FleetJob:
    """A routed job as the pool knows it."""

    id: str
    spec: JobSubmission
    tags: list[str]
    type: str | None
    created_at: float
    status: str = "queued"
    runner_id: str | None = None
    reason: str | None = None
    completed_at: float | None = None
    assigned_at: float | None = None
    seq: int = 0

    @property
    def tag_set(self) -> str:
        return tag_set(self.tags)


@dataclass
class JobRow:
    """One job of ``GET /api/jobs``: routed or runner-addressed, held or assigned."""

    id: str
    name: str
    status: str
    runner_id: str | None
    created_at: float
    started_at: float | None
    completed_at: float | None
    exit_code: int | None
    tags: list[str] = field(default_factory=list)
    type: str | None = None


@dataclass
class JobQuery:
    status: str | None = None
    runner_id: str | None = None
    tags: list[str] = field(default_factory=list)


def fleet_job(row: Row, sealer: Sealer | None) -> FleetJob:
    spec = sealer.unseal(row["spec"], row["id"]) if sealer else JobSubmission.model_validate_json(row["spec"])
    return FleetJob(
        id=row["id"],
        spec=spec,
        tags=json.loads(row["tags"]),
        type=row["type"],
        created_at=row["created_at"],
        status=row["status"],
        runner_id=row["runner_id"],
        reason=row["reason"],
        completed_at=row["completed_at"],
        assigned_at=row["assigned_at"],
        seq=row["seq"],
    )


def job_row(row: Row) -> JobRow:
    return JobRow(
        id=row["id"],
        name=row["name"],
        status=row["status"],
        runner_id=row["runner_id"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        exit_code=row["exit_code"],
        tags=json.loads(row["tags"]),
        type=row["type"],
    )
