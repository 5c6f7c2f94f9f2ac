"""What the fault tests check after each fault: every job ended once, every line arrived once."""

from __future__ import annotations

from tests.helpers import Api

EPOCH = "1970-01-01T00:00:00Z"


async def job_output(api: Api, runner_id: str, job_id: str) -> list[str]:
    """The lines the job's steps printed, oldest first, as the coordinator has them (the agent's own lines left
    out). For jobs of up to 1,000 entries, which is what these tests run."""
    status, page = await api.get(f"/runners/{runner_id}/logs?job_id={job_id}&limit=1000&since={EPOCH}")
    assert status == 200, page
    assert not page["has_more"], "job_output() reads one page; the test printed too much"
    return [e["message"] for e in page["logs"] if e["context"].get("stream") != "system"]
