"""The whole URL table of the coordinator, paths as in the API reference."""

from __future__ import annotations

from aiohttp import web

from coordinator import audit, tickets
from coordinator.api import agents, bulk, control, docs, fleet_jobs, health, jobs, logs, runners, status, stream
from coordinator.dashboard import assets, session


def setup_routes(app: web.Application) -> None:
    r = app.router
    # Fixed paths first, so they are not taken for a runner id.
    r.add_get("/api/health", health.liveness)
    r.add_get("/api/openapi.json", docs.openapi_document)
    r.add_get("/metrics", status.prometheus)
    # The web dashboard (coordinator/dashboard) and its browser sign-in.
    r.add_get("/", assets.index)
    r.add_get(assets.PREFIX + "{name}", assets.asset)
    r.add_post("/api/session", session.sign_in)
    r.add_delete("/api/session", session.sign_out)
    r.add_get("/api/whoami", session.whoami)
    r.add_post("/api/tickets", tickets.create_ticket)
    r.add_get("/api/audit", audit.list_audit)
    r.add_post("/api/runners/register", runners.register)
    r.add_get("/api/runners/ws", stream.runner_updates)
    r.add_post("/api/runners/bulk", bulk.bulk)
    r.add_get("/api/runners", runners.list_runners)
    r.add_get("/api/runners/{runner_id}", runners.get_runner)
    r.add_put("/api/runners/{runner_id}", runners.update_runner)
    r.add_delete("/api/runners/{runner_id}", runners.delete_runner)
    r.add_get("/api/runners/{runner_id}/status", status.runner_status)
    r.add_get("/api/runners/{runner_id}/health", status.runner_health)
    r.add_get("/api/runners/{runner_id}/metrics", status.runner_metrics)
    r.add_post("/api/runners/{runner_id}/jobs", jobs.submit_job)
    r.add_get("/api/runners/{runner_id}/jobs", jobs.list_jobs)
    r.add_get("/api/runners/{runner_id}/jobs/{job_id}", jobs.get_job)
    r.add_post("/api/runners/{runner_id}/jobs/{job_id}/cancel", control.cancel_job)
    r.add_get("/api/runners/{runner_id}/config", control.get_config)
    r.add_put("/api/runners/{runner_id}/config", control.put_config)
    r.add_post("/api/runners/{runner_id}/start", control.start_runner)
    r.add_post("/api/runners/{runner_id}/stop", control.stop_runner)
    r.add_post("/api/runners/{runner_id}/restart", control.restart_runner)
    # What agents call: their channel (which carries everything below), and the same two requests over HTTP.
    r.add_get("/api/runners/{runner_id}/channel", agents.channel)
    r.add_post("/api/runners/{runner_id}/heartbeat", agents.heartbeat)
    r.add_post("/api/runners/{runner_id}/events", agents.ingest_events)
    r.add_post("/api/runners/{runner_id}/announce", runners.update_runner)  # the agent re-announcing itself
    r.add_get("/api/runners/{runner_id}/logs", logs.get_logs)
    # Jobs without naming their runner: routed by tags on submit, found by id (``coordinator.routing``).
    r.add_post("/api/jobs", fleet_jobs.submit)
    r.add_get("/api/jobs", fleet_jobs.list_jobs)
    r.add_get("/api/jobs/{job_id}", fleet_jobs.get_job)
    r.add_post("/api/jobs/{job_id}/cancel", fleet_jobs.cancel_job)
