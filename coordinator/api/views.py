"""Turning stored records into the wire models the spec shows."""

from __future__ import annotations

import json
from typing import Any

from coordinator.store.base import JobRecord, RunnerRecord, Statistics
from shared.models import JobDetail, JobSummary, StepResult
from shared.timeutil import from_epoch, isoformat


def _moment(seconds: float | None) -> Any:
    return from_epoch(seconds) if seconds is not None else None


def _duration(start: float | None, end: float | None) -> float | None:
    return round(end - start, 3) if start is not None and end is not None else None


def runner_json(runner: RunnerRecord) -> str:
    """``runner_view(runner)`` serialised, built once per record (the record keeps it) without a model: the
    hot path of the runner list, where validating and dumping 50 models was most of a page's cost."""
    if runner.wire is None:
        runner.wire = _dumps(_runner_dict(runner))
    return runner.wire


def runner_detail_json(runner: RunnerRecord, statistics: Statistics, uptime_percentage: float) -> str:
    """``runner_view(runner, statistics)`` with its uptime, serialised."""
    view = _runner_dict(runner)
    view["statistics"] = {
        "total_jobs_executed": statistics.total_jobs_executed,
        "successful_jobs": statistics.successful_jobs,
        "failed_jobs": statistics.failed_jobs,
        "average_execution_time": statistics.average_execution_time,
        "uptime_percentage": uptime_percentage,
    }
    return _dumps(view)


def runner_list_json(runners: list[RunnerRecord], total_count: int, has_more: bool) -> str:
    """The ``RunnerList`` body, from each record's serialised view."""
    body = ",".join(runner_json(r) for r in runners)
    return f'{{"runners":[{body}],"total_count":{total_count},"has_more":{"true" if has_more else "false"}}}'


def _runner_dict(runner: RunnerRecord) -> dict[str, Any]:
    return {
        "id": runner.id,
        "name": runner.name,
        "type": runner.type,
        "status": runner.status,
        "host": runner.host,
        "port": runner.port,
        "capabilities": runner.capabilities,
        "tags": runner.tags,
        "metadata": {
            **runner.metadata,
            "registered_at": isoformat(from_epoch(runner.registered_at)),
            "last_seen": isoformat(from_epoch(runner.last_seen)),
        },
        "resources": runner.resources,
        "current_load": runner.load.model_dump(),
        "statistics": None,
    }


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def job_summary(job: JobRecord) -> JobSummary:
    return JobSummary(
        job_id=job.id,
        name=job.spec.name,
        status=job.status,
        created_at=from_epoch(job.created_at),
        started_at=_moment(job.started_at),
        completed_at=_moment(job.completed_at),
        duration=_duration(job.started_at, job.completed_at),
        exit_code=job.exit_code,
    )


def job_detail(job: JobRecord) -> JobDetail:
    recorded = {step.index: step for step in job.steps}
    steps = []
    for index, spec in enumerate(job.spec.steps):
        step = recorded.get(index)
        if step is None:
            status = "cancelled" if job.status == "cancelled" else "pending"
            if job.status in ("completed", "failed", "timed_out") and job.started_at is not None:
                status = "skipped"
            steps.append(StepResult(name=spec.name, status=status))
            continue
        steps.append(
            StepResult(
                name=step.name,
                status=step.status,
                exit_code=step.exit_code,
                started_at=_moment(step.started_at),
                completed_at=_moment(step.completed_at),
                duration=_duration(step.started_at, step.completed_at),
            )
        )
    summary = job_summary(job)
    return JobDetail(
        **summary.model_dump(),
        runner_id=job.runner_id,
        reason=job.reason,
        attempt=job.attempt,
        timeout=job.spec.timeout,
        retry_count=job.spec.retry_count,
        steps=steps,
        attempts=[
            {
                "attempt": a.attempt,
                "status": a.status,
                "exit_code": a.exit_code,
                "reason": a.reason,
                "started_at": _moment(a.started_at),
                "completed_at": _moment(a.completed_at),
                "duration": _duration(a.started_at, a.completed_at),
            }
            for a in job.attempts
        ],
    )
