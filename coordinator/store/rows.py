"""Records read back from a row, the same for every engine (both store the same columns: see the schemas)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from coordinator.sealing import Sealer
from coordinator.store.base import JobRecord, RunnerRecord
from shared.models import CurrentLoad, JobSubmission


class Row(Protocol):
    """A result row by column name (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: str, /) -> Any: ...


HasTags = Callable[[str, Sequence[str]], tuple[str, list[Any]]]
"""An engine's condition that a JSON-array text column holds every one of the tags (``?`` placeholders)."""


def where_clause(equal: Mapping[str, Any], tags: Sequence[str], has_tags: HasTags) -> tuple[str, list[Any]]:
    """``WHERE ...`` (or ``""``) with ``?`` placeholders for list filters: each column of ``equal`` whose value is
    set must equal it, and the ``tags`` column must hold every one of ``tags``."""
    conditions = [f"{column} = ?" for column, value in equal.items() if value]
    params: list[Any] = [value for value in equal.values() if value]
    wanted = sorted(set(tags))
    if wanted:
        condition, values = has_tags("tags", wanted)
        conditions.append(condition)
        params.extend(values)
    return (f"WHERE {' AND '.join(conditions)}" if conditions else ""), params


RUNNER_INSERT_COLUMNS = (
    "id, name, type, status, host, port, capabilities, tags, metadata, resources, token, registered_at, last_seen,"
    " heartbeat_interval, load"
)


def runner_values(runner: RunnerRecord) -> tuple[Any, ...]:
    """A new runner's values for :data:`RUNNER_INSERT_COLUMNS`, in that order."""
    return (
        runner.id,
        runner.name,
        runner.type,
        runner.status,
        runner.host,
        runner.port,
        json.dumps(runner.capabilities),
        json.dumps(runner.tags),
        json.dumps(runner.metadata),
        json.dumps(runner.resources),
        runner.token,
        float(runner.registered_at),
        float(runner.last_seen),
        float(runner.heartbeat_interval),
        runner.load.model_dump_json(),
    )


def runner_of(row: Row) -> RunnerRecord:
    return RunnerRecord(
        id=row["id"],
        name=row["name"],
        type=row["type"],
        status=row["status"],
        host=row["host"],
        port=row["port"],
        token=row["token"],
        registered_at=row["registered_at"],
        last_seen=row["last_seen"],
        last_heartbeat=row["last_heartbeat"],
        heartbeat_interval=row["heartbeat_interval"],
        capabilities=json.loads(row["capabilities"]),
        tags=json.loads(row["tags"]),
        metadata=json.loads(row["metadata"]),
        resources=json.loads(row["resources"]),
        load=CurrentLoad.model_validate_json(row["load"]),
        updated_at=row["updated_at"],
    )


def job_of(row: Row, sealer: Sealer | None) -> JobRecord:
    spec = sealer.unseal(row["spec"], row["id"]) if sealer else JobSubmission.model_validate_json(row["spec"])
    return JobRecord(
        id=row["id"],
        runner_id=row["runner_id"],
        spec=spec,
        status=row["status"],
        created_at=row["created_at"],
        attempt=row["attempt"],
        exit_code=row["exit_code"],
        reason=row["reason"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        delivered=bool(row["delivered"]),
    )


def stored_spec(spec: JobSubmission, sealer: Sealer | None) -> str:
    """The spec as stored: JSON, masked values sealed (see ``coordinator.sealing``)."""
    return sealer.seal(spec) if sealer else spec.model_dump_json()
