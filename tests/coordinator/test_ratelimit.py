"""The API's rate limits: per client IP, per runner and per user, with the X-RateLimit-* headers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.config import RateLimits
from coordinator.ratelimit import RateLimiter, Rule
from tests.conftest import API_KEY, CoordinatorHandle, coordinator_config, running_coordinator
from tests.helpers import registration

LIMITS = {
    "enabled": True,
    "registration_per_minute": 3,
    "status_per_minute": 2,
    "job_submission_per_minute": 2,
    "bulk_per_minute": 2,
}
JOB = {"name": "j", "steps": [{"name": "s", "run": "true"}]}


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[CoordinatorHandle]:
    async with running_coordinator(coordinator_config(tmp_path / "c", rate_limits=LIMITS)) as handle:
        yield handle


async def _raw(handle: CoordinatorHandle, method: str, path: str, body: Any = None) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, handle.api_url + path, json=body, headers={"X-API-Key": API_KEY}
        ) as response:
            await response.read()
            return response


async def test_registration_is_limited_per_client_with_headers(limited: CoordinatorHandle) -> None:
    before = time.time()
    remaining = []
    for i in range(3):
        response = await _raw(limited, "POST", "/runners/register", registration(name=f"r{i}"))
        assert response.status == 201
        assert response.headers["X-RateLimit-Limit"] == "3"
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
        reset = int(response.headers["X-RateLimit-Reset"])
        assert before < reset <= before + 61 and reset % 60 == 0
    assert remaining == [2, 1, 0]
    status, body = await limited.api.post("/runners/register", registration(name="one-too-many"))
    assert status == 429
    assert body["success"] is False and body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert body["error"]["details"]["limit"] == 3
    refused = await _raw(limited, "POST", "/runners/register", registration(name="again"))
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    # Nothing was registered by the refused requests.
    _, listed = await limited.api.get("/runners")
    assert listed["total_count"] == 3


async def test_job_submission_and_status_are_limited_per_runner(limited: CoordinatorHandle) -> None:
    api = limited.api
    runners = []
    for name in ("a", "b"):
        _, body = await api.post("/runners/register", registration(name=name))
        runners.append(body["runner_id"])
    a, b = runners
    assert [(await api.post(f"/runners/{a}/jobs", JOB))[0] for _ in range(3)] == [201, 201, 429]
    # Another runner has its own allowance.
    assert (await api.post(f"/runners/{b}/jobs", JOB))[0] == 201
    # The refused submission was not recorded.
    _, jobs = await api.get(f"/runners/{a}/jobs")
    assert jobs["total_count"] == 2
    # Status and health share one per-runner allowance.
    assert (await api.get(f"/runners/{a}/status"))[0] == 200
    assert (await api.get(f"/runners/{a}/health"))[0] == 200
    assert (await api.get(f"/runners/{a}/status"))[0] == 429
    assert (await api.get(f"/runners/{b}/health"))[0] == 200
    # Unlimited routes carry no rate-limit headers.
    listed = await _raw(limited, "GET", "/runners")
    assert "X-RateLimit-Limit" not in listed.headers


async def test_bulk_is_limited_per_user(limited: CoordinatorHandle) -> None:
    body = {"operation": "start", "filters": {"type": "native"}}
    statuses = [(await limited.api.post("/runners/bulk", body))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_disabled_limits_send_no_headers(coordinator: CoordinatorHandle) -> None:
    for i in range(12):
        status, _ = await coordinator.api.post("/runners/register", registration(name=f"r{i}"))
        assert status == 201
    response = await _raw(coordinator, "POST", "/runners/register", registration(name="last"))
    assert response.status == 201 and "X-RateLimit-Limit" not in response.headers


async def test_windows_are_aligned_minutes_and_reset() -> None:
    now = [1_000_000.0 * 60 + 59.5]  # half a second before a minute boundary
    limiter = RateLimiter(RateLimits(registration_per_minute=1), clock=lambda: now[0])
    rule = Rule("registration", 1, lambda request: "ip")
    first = await limiter.hit(rule, "ip")
    assert first.allowed and first.remaining == 0 and first.reset == 1_000_001 * 60
    assert not (await limiter.hit(rule, "ip")).allowed
    assert (await limiter.hit(rule, "other-ip")).allowed
    now[0] += 1.0  # the next window
    again = await limiter.hit(rule, "ip")
    assert again.allowed and again.reset == 1_000_002 * 60
