"""Jobs without naming their runner: ``POST /jobs`` routes a job by tags (``coordinator.routing``); ``GET /jobs``,
``GET /jobs/{job_id}`` and ``POST /jobs/{job_id}/cancel`` read and cancel any job, routed or runner-addressed,
held or assigned."""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web

from coordinator import control, keys
from coordinator.api.views import job_detail
from coordinator.store.base import JobRecord
from coordinator.store.fleet import FleetJob, JobQuery, JobRow
from shared import ids
from shared.errors import InvalidRequest, JobNotFound
from shared.http import json_response, parse_body, query_choice, query_int
from shared.models import (
    JOB_STATUSES,
    MAX_LIST_LIMIT,
    FleetJobDetail,
    FleetJobList,
    FleetJobSubmission,
    FleetJobSubmitResponse,
    FleetJobSummary,
)
from shared.timeutil import from_epoch, isoformat

log = structlog.get_logger(__name__)


def query_tags(request: web.Request) -> list[str]:
    tags = [tag.strip() for tag in request.query.get("tags", "").split(",") if tag.strip()]
    if len(tags) > 64:
        raise InvalidRequest("Query parameter 'tags' may list at most 64 tags", field="tags")
    return tags


def _job_event(job_id: str, runner_id: str | None, old: str | None, new: str, at: float) -> dict[str, Any]:
    return {
        "type": "job_status_change",
        "runner_id": runner_id,
        "job_id": job_id,
        "old_status": old,
        "new_status": new,
        "timestamp": isoformat(from_epoch(at)),
    }


async def submit(request: web.Request) -> web.Response:
    body = await parse_body(request, FleetJobSubmission)
    job = FleetJob(
        id=ids.new_job_id(),
        spec=body.job(),
        tags=sorted(set(body.tags)),
        type=body.type,
        created_at=time.time(),
    )
    router = request.app[keys.ROUTER]
    request.app[keys.HUB].publish(_job_event(job.id, None, None, "queued", job.created_at))
    assignment = await router.submit(job)
    runner_id = assignment.runner.id if assignment is not None else None
    log.info("fleet job accepted", job_id=job.id, tags=job.tag_set, runner_id=runner_id)
    estimate = None
    if assignment is not None:
        estimate = await request.app[keys.ESTIMATOR].start_time(assignment.runner, assignment.queue)
    response = FleetJobSubmitResponse(
        job_id=job.id, runner_id=runner_id, status="queued", tags=job.tags, estimated_start_time=estimate
    )
    return json_response(response, status=201)


def _summary(row: JobRow) -> FleetJobSummary:
    started = from_epoch(row.started_at) if row.started_at is not None else None
    completed = from_epoch(row.completed_at) if row.completed_at is not None else None
    duration = None
    if row.started_at is not None and row.completed_at is not None:
        duration = round(row.completed_at - row.started_at, 3)
    return FleetJobSummary(
        job_id=row.id,
        name=row.name,
        status=row.status,
        runner_id=row.runner_id,
        created_at=from_epoch(row.created_at),
        started_at=started,
        completed_at=completed,
        duration=duration,
        exit_code=row.exit_code,
        tags=row.tags,
        type=row.type,
    )


async def list_jobs(request: web.Request) -> web.Response:
    query = JobQuery(
        status=query_choice(request, "status", JOB_STATUSES),
        runner_id=request.query.get("runner_id") or None,
        tags=query_tags(request),
    )
    limit = query_int(request, "limit", 50, 1, MAX_LIST_LIMIT) or 50
    offset = query_int(request, "offset", 0, 0, 10_000_000) or 0
    rows, total = await request.app[keys.ROUTER].fleet.list(query, limit, offset)
    body = FleetJobList(jobs=[_summary(r) for r in rows], total_count=total, has_more=offset + len(rows) < total)
    return json_response(body)


async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    fleet = request.app[keys.ROUTER].fleet
    for _ in range(2):  # read the pool first: a job it shows assigned has its row under the runner by then
        routed = await fleet.get(job_id)
        job = await request.app[keys.STORE].get_job(job_id)
        if job is not None:
            detail = job_detail(job).model_dump()
        elif routed is not None and routed.runner_id is None:  # held: only the pool has it
            held = JobRecord(
                id=routed.id,
                runner_id="",
                spec=routed.spec,
                status=routed.status,
                created_at=routed.created_at,
                reason=routed.reason,
                completed_at=routed.completed_at,
            )
            detail = {**job_detail(held).model_dump(), "runner_id": None}
        elif routed is not None:
            continue  # moved back to the pool between the two reads
        else:
            break
        if routed is not None:
            detail["tags"], detail["type"] = routed.tags, routed.type
            detail["assigned_at"] = from_epoch(routed.assigned_at) if routed.assigned_at is not None else None
        return json_response(FleetJobDetail.model_validate(detail))
    raise JobNotFound(job_id)


async def cancel_job(request: web.Request) -> web.Response:
    app = request.app
    job_id = request.match_info["job_id"]
    for _ in range(2):  # a held job may be assigned between the two reads: then cancel it on its runner
        job = await app[keys.STORE].get_job(job_id)
        if job is not None:
            runner = await app[keys.STORE].get_runner(job.runner_id)
            if runner is None:
                raise JobNotFound(job_id)
            return json_response(await control.cancel_job(app, runner, job_id))
        routed = await app[keys.ROUTER].fleet.get(job_id)
        if routed is None:
            raise JobNotFound(job_id)
        if routed.status == "cancelled":
            return json_response(
                {"success": True, "job_id": job_id, "status": "cancelled", "message": "Job was already cancelled"}
            )
        change = await app[keys.ROUTER].cancel_held(routed, "cancelled by user")
        if change is not None:
            app[keys.HUB].publish(_job_event(job_id, None, "queued", "cancelled", change.at))
            return json_response({"success": True, "job_id": job_id, "status": "cancelled", "message": "Job cancelled"})
    raise JobNotFound(job_id)
