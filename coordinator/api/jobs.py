"""Jobs on a runner: submit, list, get."""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from coordinator import audit, keys
from coordinator.api import events
from coordinator.api.runners import get_runner_or_404
from coordinator.api.views import job_detail, job_summary
from coordinator.store.base import JobRecord, StatusChange
from shared import ids
from shared.errors import JobNotFound
from shared.http import json_response, parse_body, query_choice, query_int
from shared.models import JOB_STATUSES, MAX_LIST_LIMIT, JobList, JobSubmission, JobSubmitResponse

log = structlog.get_logger(__name__)


async def submit_job(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    spec = await parse_body(request, JobSubmission)
    job = JobRecord(id=ids.new_job_id(), runner_id=runner.id, spec=spec, status="queued", created_at=time.time())
    queue = await request.app[keys.STORE].insert_job(job)
    audit.note(request, f"job_id={job.id}")
    # Recorded first, then pushed: the job is safe here whether or not the agent takes it now.
    request.app[keys.DISPATCHER].submitted(runner, job)
    request.app[keys.HUB].publish(
        events.status_change(StatusChange("job", job.id, runner.id, None, "queued", job.created_at))
    )
    log.info("job accepted", runner_id=runner.id, job_id=job.id, steps=len(spec.steps))
    response = JobSubmitResponse(
        job_id=job.id,
        runner_id=runner.id,
        status="queued",
        estimated_start_time=await request.app[keys.ESTIMATOR].start_time(runner, queue),
    )
    return json_response(response, status=201)


async def list_jobs(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    status = query_choice(request, "status", JOB_STATUSES)
    limit = query_int(request, "limit", 50, 1, MAX_LIST_LIMIT)
    offset = query_int(request, "offset", 0, 0, 10_000_000) or 0
    jobs, total = await request.app[keys.STORE].list_jobs(runner.id, status, limit, offset)
    body = JobList(
        runner_id=runner.id,
        jobs=[job_summary(j) for j in jobs],
        total_count=total,
        has_more=offset + len(jobs) < total,
    )
    return json_response(body)


async def get_job(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    job_id = request.match_info["job_id"]
    job = await request.app[keys.STORE].get_job(job_id)
    if job is None or job.runner_id != runner.id:
        raise JobNotFound(job_id, runner.id)
    return json_response(job_detail(job))
