"""The agent's own HTTP API, called by the coordinator only (with the runner's token, for this runner only)."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from agent.keys import AGENT
from shared.errors import AuthenticationRequired, AuthorizationFailed, RunnerNotFound, RunnerUnavailable
from shared.http import error_middleware, json_response, parse_body
from shared.models import AssignmentAck, JobAssignment


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path == "/health" or request.match_info.http_exception is not None:
        response: web.StreamResponse = await handler(request)
        return response
    identity = request.app[AGENT].identity_or_none
    if identity is None:
        raise RunnerUnavailable("The agent has not registered its runner yet")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationRequired("The runner token is required as 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(token.strip(), identity.token):
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
    status = await request.app[AGENT].supervisor.assign(assignment)
    return json_response(AssignmentAck(job_id=assignment.job_id, status=status), status=202)  # type: ignore[arg-type]


def make_api(agent: Any) -> web.Application:
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=16 * 1024 * 1024)
    app[AGENT] = agent
    app.router.add_get("/health", health)
    app.router.add_post("/api/runners/{runner_id}/jobs", assign_job)
    return app
