"""Runner-specific operations that need the live agent: configuration, stop/start/restart, job cancel.

The single-runner handlers and the bulk endpoint share these functions, so a bulk ``stop`` is exactly a
``stop`` on each runner. Each call is bounded by the agent client's timeout and fails as
``RUNNER_UNAVAILABLE`` when the agent does not answer.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from coordinator import keys
from coordinator.api import events
from coordinator.store.base import RunnerChanges, RunnerRecord
from shared.errors import InvalidRequest, JobNotCancellable, JobNotFound
from shared.http import validation_error
from shared.models import TERMINAL_JOB_STATUSES, RestartRequest, RunnerConfigUpdate, StopRequest
from shared.protocol import AgentCall, CancelRequest

# What the coordinator shows while a control transition is under way (the agent's heartbeats take over).
STATUS_AFTER = {"stop": "stopped", "start": "starting", "restart": "restarting"}
CALLS: dict[str, AgentCall] = {"stop": "stop", "start": "start", "restart": "restart"}


async def _set_status(app: web.Application, runner: RunnerRecord, status: str) -> None:
    if runner.status == status:
        return
    now = time.time()
    await app[keys.STORE].update_runner(runner.id, RunnerChanges(status=status), now)
    app[keys.HUB].publish(
        events.runner_event("runner_status_change", runner.id, now, old_status=runner.status, new_status=status)
    )


async def get_config(app: web.Application, runner: RunnerRecord) -> Any:
    return await app[keys.AGENTS].call(runner, "config_get")


async def update_config(app: web.Application, runner: RunnerRecord, body: dict[str, Any]) -> Any:
    try:
        update = RunnerConfigUpdate.model_validate(body)
    except ValidationError as e:
        raise validation_error(e) from e
    if not update.model_fields_set:
        raise InvalidRequest("The configuration update names no setting", field="body")
    answer = await app[keys.AGENTS].call(runner, "config_put", update)
    if update.max_concurrent_jobs is not None:
        # Keep the registry's view (used for start-time estimates) in step with the agent.
        metadata = {**runner.metadata, "max_concurrent_jobs": update.max_concurrent_jobs}
        await app[keys.STORE].update_runner(runner.id, RunnerChanges(metadata=metadata), time.time())
    return answer


async def control(app: web.Application, runner: RunnerRecord, action: str, body: dict[str, Any]) -> Any:
    """``stop`` / ``start`` / ``restart`` on the runner's agent; held jobs are delivered after a start."""
    answer = await app[keys.AGENTS].call(runner, CALLS[action], body)
    await _set_status(app, runner, STATUS_AFTER[action])
    if action != "stop":
        app[keys.DISPATCHER].kick(runner.id)
    return answer


def control_body(action: str, raw: Any) -> dict[str, Any]:
    """Validate a stop/restart body (start takes none) before anything is sent to the agent."""
    if action == "start":
        return {}
    model = StopRequest if action == "stop" else RestartRequest
    if raw is not None and not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object", field="body")
    try:
        return model.model_validate(raw or {}).model_dump(exclude_none=True)
    except ValidationError as e:
        raise validation_error(e) from e


async def cancel_job(app: web.Application, runner: RunnerRecord, job_id: str) -> dict[str, Any]:
    store = app[keys.STORE]
    job = await store.get_job(job_id)
    if job is None or job.runner_id != runner.id:
        raise JobNotFound(job_id, runner.id)
    if job.status == "cancelled":
        return {"success": True, "job_id": job_id, "status": "cancelled", "message": "Job was already cancelled"}
    if job.status in TERMINAL_JOB_STATUSES:
        raise JobNotCancellable(
            f"Job '{job_id}' already finished as {job.status}; only queued or running jobs can be cancelled",
            job_id=job_id,
            status=job.status,
        )
    change = await store.cancel_held_job(job_id, "cancelled by user", time.time())
    if change is not None:
        app[keys.HUB].publish(events.status_change(change))
        return {"success": True, "job_id": job_id, "status": "cancelled", "message": "Job cancelled"}
    # The agent owns it: it ends the job and reports the outcome through its event channel.
    answer = await app[keys.AGENTS].call(runner, "cancel", CancelRequest(job_id=job_id))
    return dict(answer)
