"""The OpenAPI document: served without credentials, covering every public route, built from the wire models."""

from __future__ import annotations

from aiohttp import web

from coordinator.openapi import OPERATIONS
from tests.conftest import CoordinatorHandle, StartAgent

# Routes that are not part of the public API description: the agents' channel and the live streams.
INTERNAL = {
    "/runners/{runner_id}/heartbeat",
    "/runners/{runner_id}/events",
    "/runners/{runner_id}/announce",
    "/runners/{runner_id}/channel",
    "/runners/ws",
    "/openapi.json",
    "/health",
}


async def test_document_is_public_and_lists_every_public_route(coordinator: CoordinatorHandle) -> None:
    status, doc = await coordinator.client(api_key=None).get("/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    assert coordinator.app is not None
    served: set[tuple[str, str]] = set()
    for route in coordinator.app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD" or not isinstance(resource, web.Resource):
            continue
        path = resource.canonical.removeprefix("/api")
        if resource.canonical.startswith("/api") and path not in INTERNAL:
            served.add((route.method.lower(), path))
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    missing = served - documented
    assert not missing, f"routes without documentation: {sorted(missing)}"
    assert all((op.method, op.path) in served for op in OPERATIONS), "documented routes that are not served"


async def test_schemas_come_from_the_wire_models(coordinator: CoordinatorHandle) -> None:
    _, doc = await coordinator.api.get("/openapi.json")
    schemas = doc["components"]["schemas"]
    registration = schemas["RunnerRegistration"]
    assert set(registration["required"]) == {"name", "type", "host", "port"}
    assert registration["properties"]["port"]["maximum"] == 65535
    assert registration["additionalProperties"] is False
    submit = doc["paths"]["/runners/{runner_id}/jobs"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobSubmission"
    }
    assert "RUNNER_NOT_FOUND" in schemas["ErrorEnvelope"]["properties"]["error"]["properties"]["code"]["enum"]


async def test_served_bodies_match_their_documented_models(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    rid = agent.identity().runner_id
    api = coordinator.api
    status, submitted = await api.post(
        f"/runners/{rid}/jobs", {"name": "doc", "steps": [{"name": "s", "run": "echo hi"}]}
    )
    assert status == 201
    await api.wait_job(rid, submitted["job_id"], {"completed"})
    by_path = {(op.method, op.path): op for op in OPERATIONS}
    calls = {
        "/runners": "/runners",
        "/runners/{runner_id}": f"/runners/{rid}",
        "/runners/{runner_id}/jobs": f"/runners/{rid}/jobs",
        "/runners/{runner_id}/jobs/{job_id}": f"/runners/{rid}/jobs/{submitted['job_id']}",
        "/runners/{runner_id}/status": f"/runners/{rid}/status",
        "/runners/{runner_id}/health": f"/runners/{rid}/health",
        "/runners/{runner_id}/metrics": f"/runners/{rid}/metrics?period=1h&resolution=1m",
        "/runners/{runner_id}/logs": f"/runners/{rid}/logs",
        "/runners/{runner_id}/config": f"/runners/{rid}/config",
    }
    for template, path in calls.items():
        status, body = await api.get(path)
        assert status == 200, (path, body)
        model = by_path[("get", template)].response
        assert model is not None, template
        model.model_validate(body)  # raises if the served body drifted from the documented model
    _, logs = await api.get(f"/runners/{rid}/logs")
    assert any(entry["message"] == "hi" for entry in logs["logs"])
