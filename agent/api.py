"""The agent's own HTTP API, called by the coordinator only (with the runner's token, for this runner only)."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from agent import api_status
from agent.keys import AGENT
from shared.errors import AuthenticationRequired, AuthorizationFailed, RunnerNotFound, RunnerUnavailable
from shared.http import error_middleware, json_response, parse_body, setup_server
from shared.models import (
    AssignmentAck,
    CancelResult,
    JobAssignment,
    RestartRequest,
    RunnerConfigUpdate,
    RunnerConfigView,
    StopRequest,
)

# Reachable without the runner token: the liveness probe and the Prometheus scrape.
PUBLIC_PATHS = frozenset({"/health", "/metrics"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.match_info.http_exception is not None:
        response: web.StreamResponse = await handler(request)
        return response
    identity = request.app[AGENT].identity_or_none
    if identity is None:
        raise RunnerUnavailable("The agent has not registered its runner yet")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationRequired("The runner token is required as 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), identity.token.encode()):
        raise AuthorizationFailed("The token is not this runner's token")
    runner_id = request.match_info.get("runner_id")
    if runner_id != identity.runner_id:
        raise RunnerNotFound(runner_id or "")
    response = await handler(request)
    return response


async def health(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    identity = agent.identity_or_none
    return json_response({"status": "ok", "runner_id": identity.runner_id if identity else None})


async def assign_job(request: web.Request) -> web.Response:
    assignment = await parse_body(request, JobAssignment)
    agent = request.app[AGENT]
    if not agent.supervisor.accepting:
        raise RunnerUnavailable(f"Runner is {agent.state}; the job stays held on the coordinator")
    status = await agent.supervisor.assign(assignment)
    return json_response(AssignmentAck(job_id=assignment.job_id, status=status), status=202)


async def cancel_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    status = await request.app[AGENT].supervisor.cancel(job_id, "cancelled by user")
    message = "Job cancelled" if status == "cancelled" else f"Job is {status}"
    return json_response(CancelResult(job_id=job_id, status=status, message=message))


async def get_config(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    view = RunnerConfigView(
        runner_id=agent.identity().runner_id,
        configuration=agent.runtime.current(),
        last_updated=agent.runtime.last_updated,
    )
    return json_response(view)


async def put_config(request: web.Request) -> web.Response:
    update = await parse_body(request, RunnerConfigUpdate)
    return json_response(await request.app[AGENT].runtime.update(update))


async def stop_runner(request: web.Request) -> web.Response:
    body = await parse_body(request, StopRequest, optional=True)
    return json_response(await request.app[AGENT].control.stop(body))


async def start_runner(request: web.Request) -> web.Response:
    return json_response(await request.app[AGENT].control.start())


async def restart_runner(request: web.Request) -> web.Response:
    body = await parse_body(request, RestartRequest, optional=True)
    return json_response(await request.app[AGENT].control.restart(body))


def make_api(agent: Any) -> web.Application:
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=16 * 1024 * 1024)
    app[AGENT] = agent
    setup_server(app, agent.config.listen)
    app.router.add_get("/health", health)
    api_status.setup(app)
    app.router.add_post("/api/runners/{runner_id}/jobs", assign_job)
    app.router.add_post("/api/runners/{runner_id}/jobs/{job_id}/cancel", cancel_job)
    app.router.add_get("/api/runners/{runner_id}/config", get_config)
    app.router.add_put("/api/runners/{runner_id}/config", put_config)
    app.router.add_post("/api/runners/{runner_id}/stop", stop_runner)
    app.router.add_post("/api/runners/{runner_id}/start", start_runner)
    app.router.add_post("/api/runners/{runner_id}/restart", restart_runner)
    return app
