"""The OpenAPI 3.1 document of the public API, generated from the wire models in ``shared.models``.

The operation table below names, per route, the request and response models; their JSON schemas come
from pydantic, so the document cannot drift from what the handlers validate and send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared import models as m
from shared.errors import ERRORS_BY_CODE


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: dict[str, Any]
    where: str = "query"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    response: type[BaseModel] | None
    body: type[BaseModel] | None = None
    status: int = 200
    params: tuple[Param, ...] = field(default_factory=tuple)
    streams: bool = False
    """Also answers ``text/event-stream`` (Server-Sent Events) when asked to follow."""


LIMIT = Param("limit", "Maximum number of results", {"type": "integer", "minimum": 1, "maximum": m.MAX_LIST_LIMIT})
SINCE = Param("since", "Start time (ISO 8601)", {"type": "string", "format": "date-time"})
UNTIL = Param("until", "End time (ISO 8601)", {"type": "string", "format": "date-time"})
OFFSET = Param("offset", "Pagination offset", {"type": "integer", "minimum": 0})

OPERATIONS: tuple[Operation, ...] = (
    Operation("post", "/runners/register", "Register a runner", m.RegistrationResponse, m.RunnerRegistration, 201),
    Operation(
        "get",
        "/runners",
        "List runners",
        m.RunnerList,
        params=(
            Param("status", "Filter by runner status", {"enum": list(m.RUNNER_STATUSES)}),
            Param("type", "Filter by runner type", {"enum": list(m.RUNNER_TYPES)}),
            Param("tags", "Comma-separated tags; all must match", {"type": "string"}),
            LIMIT,
            OFFSET,
        ),
    ),
    Operation("get", "/runners/{runner_id}", "Get runner details", m.RunnerView),
    Operation("put", "/runners/{runner_id}", "Update a runner", m.Ok, m.RunnerUpdate),
    Operation(
        "delete",
        "/runners/{runner_id}",
        "Delete a runner",
        m.Ok,
        params=(Param("force", "Cancel its queued and running jobs", {"type": "boolean"}),),
    ),
    Operation("get", "/runners/{runner_id}/status", "Get runner status", m.RunnerStatusView),
    Operation("get", "/runners/{runner_id}/health", "Check runner health", m.RunnerHealthView),
    Operation(
        "get",
        "/runners/{runner_id}/metrics",
        "Get runner metrics history",
        m.RunnerMetrics,
        params=(
            Param("period", "Time period", {"enum": ["1h", "24h", "7d", "30d"]}),
            Param("resolution", "Bucket size", {"enum": ["1m", "5m", "1h"]}),
        ),
    ),
    Operation(
        "get",
        "/runners/{runner_id}/logs",
        "Get runner logs (Server-Sent Events with follow=true or Accept: text/event-stream)",
        m.LogPage,
        params=(
            SINCE,
            UNTIL,
            Param("level", "Minimum level", {"enum": list(m.LOG_LEVELS)}),
            Param("limit", "Maximum number of entries", {"type": "integer", "minimum": 1, "maximum": 10_000}),
            Param("follow", "Stream entries as they arrive", {"type": "boolean"}),
            Param("job_id", "Only this job's entries", {"type": "string"}),
            Param("step", "Only this step's entries", {"type": "string"}),
            Param(
                "ticket",
                "Single-use ticket from POST /tickets, for clients that cannot send headers",
                {"type": "string"},
            ),
        ),
        streams=True,
    ),
    Operation("post", "/runners/{runner_id}/jobs", "Submit a job", m.JobSubmitResponse, m.JobSubmission, 201),
    Operation(
        "get",
        "/runners/{runner_id}/jobs",
        "List a runner's jobs",
        m.JobList,
        params=(Param("status", "Filter by job status", {"enum": list(m.JOB_STATUSES)}), LIMIT, OFFSET),
    ),
    Operation("get", "/runners/{runner_id}/jobs/{job_id}", "Get a job with its steps and attempts", m.JobDetail),
    Operation("post", "/runners/{runner_id}/jobs/{job_id}/cancel", "Cancel a job", m.CancelResult),
    Operation("get", "/runners/{runner_id}/config", "Get runner configuration", m.RunnerConfigView),
    Operation(
        "put", "/runners/{runner_id}/config", "Update runner configuration", m.ConfigUpdateResult, m.RunnerConfigUpdate
    ),
    Operation("post", "/runners/{runner_id}/start", "Start a stopped runner", m.ControlResult),
    Operation("post", "/runners/{runner_id}/stop", "Stop a runner", m.ControlResult, m.StopRequest),
    Operation("post", "/runners/{runner_id}/restart", "Restart a runner", m.ControlResult, m.RestartRequest),
    Operation("post", "/runners/bulk", "Operate on many runners", m.BulkResult, m.BulkRequest),
    Operation("get", "/whoami", "Who the credential or dashboard session is", m.Identity),
    Operation(
        "post", "/session", "Sign in to the dashboard: the credential becomes a session cookie", m.Identity, status=201
    ),
    Operation("delete", "/session", "Sign out of the dashboard", m.Ok),
    Operation("post", "/tickets", "Get a single-use ticket to open a stream", m.TicketResponse, status=201),
    Operation(
        "get",
        "/audit",
        "Read the audit trail, newest first (admins only)",
        m.AuditList,
        params=(
            SINCE,
            UNTIL,
            Param("principal", "Only this principal (key:NAME, user:SUB, runner:ID)", {"type": "string"}),
            LIMIT,
            OFFSET,
        ),
    ),
    Operation(
        "post",
        "/jobs",
        "Submit a job to the fleet: assigned to a runner with all its tags, or held until one qualifies",
        m.FleetJobSubmitResponse,
        m.FleetJobSubmission,
        201,
    ),
    Operation(
        "get",
        "/jobs",
        "List jobs of every runner, and those held for the fleet",
        m.FleetJobList,
        params=(
            Param("status", "Filter by job status", {"enum": list(m.JOB_STATUSES)}),
            Param("runner_id", "Only jobs assigned to this runner", {"type": "string"}),
            Param("tags", "Comma-separated tags; jobs routed by all of them", {"type": "string"}),
            LIMIT,
            OFFSET,
        ),
    ),
    Operation("get", "/jobs/{job_id}", "Get any job, with its runner (null while held)", m.FleetJobDetail),
    Operation("post", "/jobs/{job_id}/cancel", "Cancel any job, held or on its runner", m.CancelResult),
)

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"const": False},
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"enum": sorted(ERRORS_BY_CODE)},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        },
    },
}


def document(extra_paths: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    pairs: list[tuple[type[BaseModel], Any]] = []
    for op in OPERATIONS:
        if op.response is not None:
            pairs.append((op.response, "serialization"))
        if op.body is not None:
            pairs.append((op.body, "validation"))
    _, schemas = models_json_schema(list(dict.fromkeys(pairs)), ref_template="#/components/schemas/{model}")
    components = dict(schemas.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("runner_id", "job_id")
            if "{" + name + "}" in op.path
        ]
        parameters += [
            {"name": p.name, "in": p.where, "description": p.description, "schema": p.schema} for p in op.params
        ]
        responses: dict[str, Any] = {
            str(op.status): {
                "description": op.summary,
                "content": {"application/json": {"schema": _schema_ref(op.response, components)}},
            },
            "default": {
                "description": "Error envelope",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
            },
        }
        if op.streams:
            responses[str(op.status)]["content"]["text/event-stream"] = {"schema": {"type": "string"}}
        operation: dict[str, Any] = {"summary": op.summary, "parameters": parameters, "responses": responses}
        if op.body is not None:
            operation["requestBody"] = {
                "required": op.body is not m.StopRequest and op.body is not m.RestartRequest,
                "content": {"application/json": {"schema": _schema_ref(op.body, components)}},
            }
        paths.setdefault(op.path, {})[op.method] = operation
    for path, methods in (extra_paths or {}).items():
        paths.setdefault(path, {}).update(methods)
    components["ErrorEnvelope"] = ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": "RustCI Runner API", "version": "1.0.0"},
        "servers": [{"url": "/api"}],
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"apiKey": []}, {"bearer": []}],
        "paths": paths,
    }


def _schema_ref(model: type[BaseModel] | None, components: dict[str, Any]) -> dict[str, Any]:
    if model is None:
        return {"type": "object"}
    if model.__name__ in components:
        return {"$ref": f"#/components/schemas/{model.__name__}"}
    return model.model_json_schema()
