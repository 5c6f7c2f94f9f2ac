"""Runner status, health and metrics history, and the coordinator's Prometheus scrape.

Status and health are asked of the agent itself (bounded by ``agents.status_timeout``). An agent that does not
answer is not an error here: that *is* the runner's status, so the answer is 200 with the runner ``inactive``
and ``unhealthy``, built from its last heartbeat.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from coordinator import keys
from coordinator.api.runners import get_runner_or_404
from coordinator.store.base import RunnerRecord
from coordinator.store.metrics import SCALE, SERIES, History
from shared.errors import ApiError
from shared.http import json_response, query_choice
from shared.models import (
    CurrentLoad,
    HealthCheck,
    MetricPoint,
    MetricsSummary,
    RunnerHealthView,
    RunnerMetrics,
    RunnerStatusView,
    overall_health,
)
from shared.protocol import AgentCall
from shared.timeutil import from_epoch, utcnow

log = structlog.get_logger(__name__)

PERIODS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
RESOLUTIONS = {"1m": 60, "5m": 300, "1h": 3600}
DEFAULT_PERIOD, DEFAULT_RESOLUTION = "24h", "5m"


async def _ask_agent(request: web.Request, runner: RunnerRecord, kind: AgentCall) -> Any:
    """The agent's answer, or the error that says why there is none (logged, not raised)."""
    timeout = request.app[keys.CONFIG].agents.status_timeout
    try:
        return await request.app[keys.AGENTS].call(runner, kind, timeout=timeout)
    except ApiError as e:
        log.info("agent did not answer", runner_id=runner.id, call=kind, code=e.code, reason=e.message)
        return e


# The check each runner type's executor adds to its health (the agent's answer lists them itself).
EXECUTOR_CHECKS = {"docker": "docker_daemon", "kubernetes": "kubernetes_api", "native": "resource_limits"}


# --- status ------------------------------------------------------------------------------------------------


async def runner_status(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    answer = await _ask_agent(request, runner, "status")
    # Jobs the coordinator still holds (agent away, runner stopped) are queued too, though no agent counts them.
    held = await request.app[keys.STORE].held_job_count(runner.id)
    last_heartbeat = from_epoch(runner.last_heartbeat) if runner.last_heartbeat is not None else None
    live: RunnerStatusView | None = None
    if not isinstance(answer, ApiError):
        try:
            live = RunnerStatusView.model_validate(answer)
        except ValidationError as e:
            log.warning("agent status answer not understood", runner_id=runner.id, error=str(e))
    if live is None:
        view = RunnerStatusView(
            runner_id=runner.id,
            status="inactive",
            health="unhealthy",
            last_heartbeat=last_heartbeat,
            current_load=_with_held(runner.load, held),
            capabilities_status={name: "unavailable" for name in runner.capabilities},
        )
    else:
        # The registry's capability list is what users see; the agent says which of them work right now.
        # One the agent does not report, it does not offer.
        view = RunnerStatusView(
            runner_id=runner.id,
            status=live.status,
            health=live.health,
            last_heartbeat=last_heartbeat,
            current_load=_with_held(live.current_load, held),
            capabilities_status={
                name: live.capabilities_status.get(name, "unavailable") for name in runner.capabilities
            },
        )
    return json_response(view)


def _with_held(load: CurrentLoad, held: int) -> CurrentLoad:
    return load.model_copy(update={"queued_jobs": load.queued_jobs + held})


# --- health ------------------------------------------------------------------------------------------------


async def runner_health(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    started = time.perf_counter()
    answer = await _ask_agent(request, runner, "health")
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    agent_view: RunnerHealthView | None = None
    error = answer.message if isinstance(answer, ApiError) else None
    if error is None:
        try:
            agent_view = RunnerHealthView.model_validate(answer)
        except ValidationError as e:
            error = f"the agent's health answer was not understood: {e.error_count()} problem(s)"
    checks: dict[str, HealthCheck]
    if agent_view is not None:
        checks = {"connectivity": HealthCheck(status="pass", response_time_ms=elapsed_ms), **agent_view.checks}
    else:
        # Nothing on the host could be checked: say so rather than guess.
        checks = {"connectivity": HealthCheck(status="fail", response_time_ms=elapsed_ms, error=error)}
        unreachable = HealthCheck(status="unknown", error="the agent did not answer")
        if runner.type in EXECUTOR_CHECKS:
            checks[EXECUTOR_CHECKS[runner.type]] = unreachable
        checks["disk_space"] = unreachable
        checks["memory"] = unreachable
    view = RunnerHealthView(runner_id=runner.id, health=overall_health(checks), checks=checks, last_check=utcnow())
    return json_response(view)


# --- metrics history ---------------------------------------------------------------------------------------


def _summary(history: History) -> MetricsSummary:
    def scaled(value: float | None) -> float | None:
        return round(value / SCALE, 2) if value is not None else None

    return MetricsSummary(
        avg_cpu_usage=scaled(history.average("cpu_usage")),
        max_cpu_usage=scaled(history.maximum("cpu_usage")),
        avg_memory_usage=scaled(history.average("memory_usage")),
        max_memory_usage=scaled(history.maximum("memory_usage")),
        total_jobs_executed=history.jobs_executed,
    )


async def runner_metrics(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    period = query_choice(request, "period", tuple(PERIODS)) or DEFAULT_PERIOD
    resolution = query_choice(request, "resolution", tuple(RESOLUTIONS)) or DEFAULT_RESOLUTION
    now = time.time()
    store = request.app[keys.METRICS_STORE]
    history = await store.history(runner.id, now - PERIODS[period], now, RESOLUTIONS[resolution])
    if history is None:  # deleted between the two reads
        history = History([], 0)
    series = {
        name: [
            MetricPoint(timestamp=from_epoch(b.start), value=round(b.average(name) / SCALE, 2)) for b in history.buckets
        ]
        for name in SERIES
    }
    body = RunnerMetrics(
        runner_id=runner.id, period=period, resolution=resolution, metrics=series, summary=_summary(history)
    )
    return json_response(body)


# --- Prometheus --------------------------------------------------------------------------------------------


async def prometheus(request: web.Request) -> web.Response:
    metrics = request.app[keys.PROMETHEUS]
    app = request.app
    await metrics.refresh(
        app[keys.METRICS_STORE], app[keys.HUB], app[keys.LOG_FEED].follower_count, app[keys.STORE].storage_errors
    )
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
