"""Submissions to the fleet are rate-limited per tag set, as submissions to one runner are per runner."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.conftest import API_KEY, coordinator_config, running_coordinator

LIMITS = {"enabled": True, "job_submission_per_minute": 2}
JOB = {"name": "j", "steps": [{"name": "s", "run": "true"}]}


async def _post(session: aiohttp.ClientSession, url: str, tags: list[str]) -> tuple[int, str, str | None]:
    async with session.post(url, json={**JOB, "tags": tags}, headers={"X-API-Key": API_KEY}) as response:
        body = await response.json()
        code = body["error"]["code"] if response.status >= 400 else ""
        return response.status, code, response.headers.get("X-RateLimit-Reset")


async def test_fleet_submissions_count_per_tag_set(tmp_path: Path) -> None:
    async with running_coordinator(coordinator_config(tmp_path / "c", rate_limits=LIMITS)) as handle:
        url = f"{handle.api_url}/jobs"
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # a second go if the sequence straddled a minute boundary
                results = [await _post(session, url, tags) for tags in (["a", "b"], ["b", "a"], ["a", "b"], ["c"])]
                runner_jobs = await _post(session, url, ["b", "a"])
                if len({reset for *_, reset in results}) == 1:
                    break
            assert [(status, code) for status, code, _ in results] == [
                (201, ""),
                (201, ""),  # the same set of tags, in another order
                (429, "RATE_LIMIT_EXCEEDED"),
                (201, ""),  # another tag set has its own count
            ]
            assert runner_jobs[0] == 429
