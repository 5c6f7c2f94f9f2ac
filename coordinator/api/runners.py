"""Runner registry: register, list, get, update, delete."""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web

from coordinator import audit, keys
from coordinator.api import events
from coordinator.api.views import runner_detail_json, runner_list_json
from coordinator.store.base import RunnerChanges, RunnerFilter, RunnerRecord
from shared import ids
from shared.errors import InvalidRequest, RunnerBusy, RunnerNotFound
from shared.http import json_response, parse_body, query_bool, query_choice, query_int
from shared.models import (
    MAX_LIST_LIMIT,
    RUNNER_STATUSES,
    RUNNER_TYPES,
    Ok,
    RegistrationResponse,
    RunnerRegistration,
    RunnerUpdate,
)

log = structlog.get_logger(__name__)


async def get_runner_or_404(request: web.Request) -> RunnerRecord:
    runner_id = request.match_info["runner_id"]
    runner = await request.app[keys.STORE].get_runner(runner_id)
    if runner is None:
        raise RunnerNotFound(runner_id)
    return runner


def _heartbeat_interval(metadata: dict[str, Any], default: float) -> float:
    value = metadata.get("heartbeat_interval")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 3600:
        return float(value)
    return default


async def register(request: web.Request) -> web.Response:
    body = await parse_body(request, RunnerRegistration)
    config = request.app[keys.CONFIG]
    now = time.time()
    runner = RunnerRecord(
        id=ids.new_runner_id(),
        name=body.name,
        type=body.type,
        status="active",  # registering is a sign of life; liveness takes over from here
        host=body.host,
        port=body.port,
        token=ids.new_runner_token(),
        registered_at=now,
        last_seen=now,
        heartbeat_interval=_heartbeat_interval(body.metadata, config.runners.default_heartbeat_interval),
        capabilities=list(dict.fromkeys(body.capabilities)),
        tags=list(dict.fromkeys(body.tags)),
        metadata=body.metadata,
        resources=body.resources.model_dump(exclude_none=True) if body.resources else {},
    )
    await request.app[keys.STORE].insert_runner(runner)
    audit.note(request, f"runner_id={runner.id}")
    log.info("runner registered", runner_id=runner.id, name=runner.name, type=runner.type)
    request.app[keys.HUB].publish(events.runner_event("runner_registered", runner.id, now, name=runner.name))
    response = RegistrationResponse(runner_id=runner.id, registration_token=runner.token)
    return json_response(response, status=201)


async def list_runners(request: web.Request) -> web.Response:
    tags_raw = request.query.get("tags", "")
    tags = [tag.strip() for tag in tags_raw.split(",") if tag.strip()]
    if len(tags) > 64:
        raise InvalidRequest("Query parameter 'tags' may list at most 64 tags", field="tags")
    filters = RunnerFilter(
        status=query_choice(request, "status", RUNNER_STATUSES),
        type=query_choice(request, "type", RUNNER_TYPES),
        tags=tags,
    )
    limit = query_int(request, "limit", 50, 1, MAX_LIST_LIMIT)
    offset = query_int(request, "offset", 0, 0, 10_000_000) or 0
    runners, total = await request.app[keys.STORE].list_runners(filters, limit, offset)
    body = runner_list_json(runners, total, offset + len(runners) < total)
    return web.Response(text=body, content_type="application/json")


async def get_runner(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    statistics = await request.app[keys.STORE].statistics(runner.id)
    uptime = await request.app[keys.METRICS_STORE].uptime_percentage(runner.id, runner.registered_at, time.time())
    return web.Response(text=runner_detail_json(runner, statistics, uptime), content_type="application/json")


async def update_runner(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    body = await parse_body(request, RunnerUpdate)
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"metadata", "resources"})
    for key in ("capabilities", "tags"):
        if key in changes and changes[key] is not None:
            changes[key] = list(dict.fromkeys(changes[key]))
    changes = {k: v for k, v in changes.items() if v is not None}
    if body.metadata is not None:
        changes["metadata"] = {**runner.metadata, **body.metadata}
        changes["heartbeat_interval"] = _heartbeat_interval(changes["metadata"], runner.heartbeat_interval)
    if body.resources is not None:
        changes["resources"] = body.resources.model_dump(exclude_none=True)
    now = time.time()
    announced = sorted(set(changes) - {"heartbeat_interval"})
    principal = request.get(keys.PRINCIPAL)
    if principal is not None and principal.role == "runner":
        changes["last_seen"] = now  # the runner's own agent re-announcing itself is a sign of life
    await request.app[keys.STORE].update_runner(runner.id, RunnerChanges(**changes), now)
    request.app[keys.HUB].publish(events.runner_event("runner_updated", runner.id, now, fields=announced))
    return json_response(Ok(message="Runner updated successfully"))


async def delete_runner(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    store = request.app[keys.STORE]
    force = query_bool(request, "force")
    open_jobs = await store.open_job_count(runner.id)
    if open_jobs and not force:
        raise RunnerBusy(
            f"Runner '{runner.id}' has {open_jobs} queued or running job(s); retry with ?force=true to cancel them",
            runner_id=runner.id,
            open_jobs=open_jobs,
        )
    now = time.time()
    hub = request.app[keys.HUB]
    if open_jobs:
        for change in await store.cancel_open_jobs(runner.id, "runner deleted", now):
            hub.publish(events.status_change(change))
    await store.delete_runner(runner.id)
    request.app[keys.RUNNER_TOKENS].forget(runner.id)
    log.info("runner deleted", runner_id=runner.id, cancelled_jobs=open_jobs)
    hub.publish(events.runner_event("runner_deleted", runner.id, now))
    return json_response(Ok(message="Runner deleted successfully"))
