"""The agent's live view of its runner: status and health for the coordinator, and the Prometheus scrape.

The coordinator asks for ``GET /runners/{id}/status`` and ``/health`` over the channel, so both answer from the
host itself: the load now, the executor's own checks (its engine or cluster asked now, cached for a few seconds;
the limits it enforces), free disk and memory against the thresholds in the agent's config. ``/metrics`` (on the
agent's local HTTP API) needs no token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from agent import sysinfo
from agent.config import AgentConfig
from agent.executors.base import Executor
from agent.keys import AGENT
from shared.models import (
    CapabilityState,
    CheckStatus,
    HealthCheck,
    RunnerHealthView,
    RunnerStatus,
    RunnerStatusView,
    overall_health,
)
from shared.timeutil import utcnow

if TYPE_CHECKING:
    from agent.daemon import Agent

STATE_TO_STATUS: dict[str, RunnerStatus] = {
    "running": "active",
    "stopped": "stopped",
    "starting": "starting",
    "restarting": "restarting",
}


def _grade(available: float, warn_below: float, fail_below: float) -> CheckStatus:
    if available < fail_below:
        return "fail"
    return "warn" if available < warn_below else "pass"


async def host_checks(config: AgentConfig, executor: Executor) -> dict[str, HealthCheck]:
    """The executor's checks (``docker_daemon``, ``kubernetes_api``, ``resource_limits``), ``disk_space`` and
    ``memory``."""
    checks: dict[str, HealthCheck] = dict(await executor.health())
    disk_gb, memory_gb = sysinfo.free_gb(config.workspaces)
    limits = config.health
    checks["disk_space"] = HealthCheck(
        status=_grade(disk_gb, limits.disk_warn_gb, limits.disk_fail_gb),
        available_gb=disk_gb,
    )
    checks["memory"] = HealthCheck(
        status=_grade(memory_gb, limits.memory_warn_gb, limits.memory_fail_gb),
        available_gb=memory_gb,
    )
    return checks


async def status_view(agent: Agent) -> RunnerStatusView:
    config = agent.config
    checks = await host_checks(config, agent.executor)
    capabilities: dict[str, CapabilityState] = {name: "available" for name in config.runner.capabilities}
    capabilities.update(await agent.executor.capabilities())
    return RunnerStatusView(
        runner_id=agent.identity().runner_id,
        status=STATE_TO_STATUS.get(agent.state, "error"),
        health=overall_health(checks),
        current_load=sysinfo.load(config.state_dir, agent.supervisor.active_jobs, agent.supervisor.queued_jobs),
        capabilities_status=capabilities,
    )


async def health_view(agent: Agent) -> RunnerHealthView:
    checks = await host_checks(agent.config, agent.executor)
    return RunnerHealthView(
        runner_id=agent.identity().runner_id, health=overall_health(checks), checks=checks, last_check=utcnow()
    )


async def prometheus(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    await agent.metrics.refresh(
        agent.store.db, agent.supervisor.active_jobs, agent.supervisor.queued_jobs, agent.outbox.dropped_entries
    )
    return web.Response(body=agent.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
