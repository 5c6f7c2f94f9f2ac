"""What the agent answers: the coordinator's calls over the channel, and a small local HTTP API.

The coordinator reaches the agent only through the channel the agent opened (``agent.channel``); :func:`calls`
is the table of its calls, one handler per ``shared.protocol`` kind. The HTTP API on ``listen`` serves only
what local tools need and takes no runner token: ``/health`` (a liveness probe for systemd, Docker or a load
balancer) and ``/metrics`` (the Prometheus scrape). It never takes jobs or control calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel

from agent import api_status
from agent.keys import AGENT
from shared.errors import RunnerUnavailable
from shared.http import error_middleware, json_response, setup_server
from shared.models import (
    AssignmentAck,
    CancelResult,
    JobAssignment,
    RestartRequest,
    RunnerConfigUpdate,
    RunnerConfigView,
    StopRequest,
)
from shared.protocol import CancelRequest

if TYPE_CHECKING:
    from agent.channel import Handler
    from agent.daemon import Agent


def calls(agent: Agent) -> dict[str, Handler]:
    """The coordinator's calls, by ``shared.protocol`` kind."""

    async def job(assignment: JobAssignment) -> BaseModel:
        if not agent.supervisor.accepting:
            raise RunnerUnavailable(f"Runner is {agent.state}; the job stays held on the coordinator")
        status = await agent.supervisor.assign(assignment)
        return AssignmentAck(job_id=assignment.job_id, status=status)

    async def cancel(body: CancelRequest) -> BaseModel:
        status = await agent.supervisor.cancel(body.job_id, body.reason)
        message = "Job cancelled" if status == "cancelled" else f"Job is {status}"
        return CancelResult(job_id=body.job_id, status=status, message=message)

    async def config_get(_: Any) -> BaseModel:
        return RunnerConfigView(
            runner_id=agent.identity().runner_id,
            configuration=agent.runtime.current(),
            last_updated=agent.runtime.last_updated,
        )

    async def config_put(update: RunnerConfigUpdate) -> BaseModel:
        return await agent.runtime.update(update)

    async def stop(body: StopRequest) -> BaseModel:
        return await agent.control.stop(body)

    async def start(_: Any) -> BaseModel:
        return await agent.control.start()

    async def restart(body: RestartRequest) -> BaseModel:
        return await agent.control.restart(body)

    async def status(_: Any) -> BaseModel:
        return await api_status.status_view(agent)

    async def health(_: Any) -> BaseModel:
        return await api_status.health_view(agent)

    return {
        "job": job,
        "cancel": cancel,
        "config_get": config_get,
        "config_put": config_put,
        "stop": stop,
        "start": start,
        "restart": restart,
        "status": status,
        "health": health,
    }


async def health(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    identity = agent.identity_or_none
    return json_response(
        {
            "status": "ok",
            "runner_id": identity.runner_id if identity else None,
            "state": agent.state,
            "connected": agent.channel.connected.is_set(),
        }
    )


def make_api(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=1024 * 1024)
    app[AGENT] = agent
    setup_server(app, agent.config.listen)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", api_status.prometheus)
    return app
