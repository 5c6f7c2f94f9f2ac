"""``POST /runners/bulk``: one operation on every runner matching the filters, concurrently with a bound.

Each runner's outcome is reported on its own; one unreachable runner never fails the others. ``filters`` is
required (an explicit ``{}`` selects every runner), so a body that forgets it never deletes the fleet.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from coordinator import access, audit, control, keys
from coordinator.api import events
from coordinator.store.base import RunnerFilter, RunnerRecord
from shared.errors import ApiError, InvalidRequest, RunnerBusy
from shared.http import json_response, parse_body, validation_error
from shared.models import BulkItem, BulkItemError, BulkRequest, BulkResult, RunnerConfigUpdate

CONCURRENCY = 16


async def _delete(app: web.Application, runner: RunnerRecord, force: bool) -> None:
    store = app[keys.STORE]
    open_jobs = await store.open_job_count(runner.id)
    if open_jobs and not force:
        raise RunnerBusy(f"Runner '{runner.id}' has {open_jobs} queued or running job(s)", runner_id=runner.id)
    now = time.time()
    for change in await store.cancel_open_jobs(runner.id, "runner deleted", now):
        app[keys.HUB].publish(events.status_change(change))
    await store.delete_runner(runner.id)
    app[keys.RUNNER_TOKENS].forget(runner.id)
    app[keys.HUB].publish(events.runner_event("runner_deleted", runner.id, now))


async def bulk(request: web.Request) -> web.Response:
    body = await parse_body(request, BulkRequest)
    audit.note(request, f"operation={body.operation}")
    if body.operation == "delete":
        access.require_admin(request, request.get(keys.PRINCIPAL), "delete runners")
    data: dict[str, Any] = body.data or {}
    # Validate the payload once, up front: a bad payload is the caller's error, not N runner failures.
    if body.operation == "update_config":
        if not data:
            raise InvalidRequest("update_config needs 'data' with the settings to change", field="data")
        _check_config(data)
    elif body.operation in ("stop", "restart"):
        data = control.control_body(body.operation, data)
    elif body.operation == "delete" and set(data) - {"force"}:
        raise InvalidRequest("delete takes only 'force' in 'data'", field="data")

    # Required, so that no request acts on the whole fleet by leaving something out: {} is every runner.
    if "filters" not in body.model_fields_set:
        raise InvalidRequest("'filters' is required: the runners to act on ({} for every runner)", field="filters")
    filters = RunnerFilter(status=body.filters.status, type=body.filters.type, tags=list(body.filters.tags))
    runners, _ = await request.app[keys.STORE].list_runners(filters, None, 0)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(runner: RunnerRecord) -> BulkItem:
        async with gate:
            try:
                if body.operation == "update_config":
                    await control.update_config(request.app, runner, data)
                elif body.operation == "delete":
                    await _delete(request.app, runner, bool(data.get("force")))
                else:
                    await control.control(request.app, runner, body.operation, data)
            except ApiError as e:
                return BulkItem(runner_id=runner.id, success=False, error=BulkItemError(code=e.code, message=e.message))
            return BulkItem(runner_id=runner.id, success=True)

    results = await asyncio.gather(*(one(r) for r in runners))
    result = BulkResult(
        success=all(item.success for item in results), affected_runners=len(runners), results=list(results)
    )
    return json_response(result)


def _check_config(data: dict[str, Any]) -> None:
    try:
        RunnerConfigUpdate.model_validate(data)
    except ValidationError as e:
        error = validation_error(e, "bulk data")
        error.details["field"] = f"data.{error.details.get('field')}"
        raise error from e
