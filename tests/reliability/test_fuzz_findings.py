"""Cases the schemathesis run (``python -m tests.reliability.fuzz``) found, kept as regular tests."""

from __future__ import annotations

from tests.conftest import CoordinatorHandle
from tests.helpers import register_runner


async def test_the_log_stream_content_type_is_documented(coordinator: CoordinatorHandle) -> None:
    # Found: GET /runners/{id}/logs?follow=true answers text/event-stream, which the document did not declare.
    status, document = await coordinator.api.get("/openapi.json")
    assert status == 200
    content = document["paths"]["/runners/{runner_id}/logs"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream"}
    runner = await register_runner(coordinator.api, type="native", host="127.0.0.1")
    async with coordinator.api.session.get(
        f"{coordinator.api_url}/runners/{runner['runner_id']}/logs?follow=true",
        headers={"X-API-Key": coordinator.api.api_key or ""},
    ) as response:
        assert response.status == 200
        assert response.content_type in content


async def test_a_runner_at_an_address_nothing_serves_answers_the_documented_503(
    coordinator: CoordinatorHandle,
) -> None:
    # Found: control calls to a runner registered with an address that cannot be used (host "0") answer
    # 503 RUNNER_UNAVAILABLE; that is the documented answer, and it must stay the envelope, never a 500.
    runner = await register_runner(coordinator.api, type="native", host="0", port=1)
    for method, path in (("GET", "config"), ("POST", "stop"), ("POST", "start"), ("POST", "restart")):
        status, body = await coordinator.api.request(method, f"/runners/{runner['runner_id']}/{path}")
        assert status == 503, (path, body)
        assert body["error"]["code"] == "RUNNER_UNAVAILABLE", body


async def test_dashboard_sign_in_answers_the_documented_201(coordinator: CoordinatorHandle) -> None:
    # Found: POST /session answered 201 while the document declared 200, so the body was checked as an error.
    status, document = await coordinator.api.get("/openapi.json")
    assert status == 200
    declared = document["paths"]["/session"]["post"]["responses"]
    status, body = await coordinator.api.post("/session", None)
    assert status == 201 and str(status) in declared, (status, sorted(declared))
    assert body["role"] == "admin"
