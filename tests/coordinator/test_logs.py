"""``GET /runners/{id}/logs``: the page (shape, ordering, filters, limits, errors) and the live stream (SSE).

Entries go in the way agents send them: batches on ``POST /runners/{id}/events`` with the runner's token.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from coordinator import keys
from shared.timeutil import from_epoch, isoformat
from tests.conftest import CoordinatorHandle, coordinator_config, running_coordinator
from tests.helpers import Api, wait_for

KEEPALIVE = 0.1
QUEUE_LIMIT = 20
T0 = 1_700_000_000.0  # entry i is stamped T0 + i seconds


@pytest.fixture
async def coord(tmp_path: Path) -> AsyncIterator[CoordinatorHandle]:
    async with running_coordinator(
        coordinator_config(
            tmp_path / "coordinator", log_stream={"keepalive_interval": KEEPALIVE, "queue_limit": QUEUE_LIMIT}
        )
    ) as handle:
        yield handle


@dataclass
class Runner:
    id: str
    agent: Api
    next_seq: int = 1

    async def send(self, *entries: dict[str, Any]) -> None:
        events = []
        for entry in entries:
            seq = entry.get("seq", self.next_seq)
            self.next_seq = seq + 1
            events.append(
                {
                    "kind": "log",
                    "seq": seq,
                    "at": isoformat(from_epoch(T0 + seq)),
                    "level": "info",
                    "message": f"line {seq}",
                    "stream": "stdout",
                    **entry,
                }
            )
        status, body = await self.agent.post(f"/runners/{self.id}/events", {"events": events})
        assert status == 200, body

    async def lines(self, count: int, **fields: Any) -> None:
        for start in range(0, count, 2000):  # batches the size an agent sends
            await self.send(*[dict(fields) for _ in range(min(2000, count - start))])


@pytest.fixture
async def runner(coord: CoordinatorHandle) -> Runner:
    status, body = await coord.api.post(
        "/runners/register", {"name": "logs", "type": "native", "host": "127.0.0.1", "port": 9}
    )
    assert status == 201, body
    return Runner(body["runner_id"], coord.client(body["registration_token"]))


async def page(coord: CoordinatorHandle, runner: Runner, **query: Any) -> dict[str, Any]:
    status, body = await coord.api.get(f"/runners/{runner.id}/logs?{urlencode(query)}")
    assert status == 200, body
    return dict(body)


def seqs(body: dict[str, Any]) -> list[int]:
    return [entry["seq"] for entry in body["logs"]]


def at(seq: int) -> str:
    return isoformat(from_epoch(T0 + seq))


# --- the page -------------------------------------------------------------------------------------------------


async def test_page_has_the_spec_shape(coord: CoordinatorHandle, runner: Runner) -> None:
    await runner.send(
        {"message": "Job started: job_1", "stream": "system", "job_id": "job_1", "attempt": 1},
        {"message": "hello", "level": "info", "job_id": "job_1", "step": "build", "attempt": 1},
        {"message": "oops", "level": "warn", "stream": "stderr", "job_id": "job_1", "step": "build", "attempt": 1},
    )
    body = await page(coord, runner)
    assert set(body) == {"runner_id", "logs", "total_count", "has_more"}
    assert body["runner_id"] == runner.id
    assert body["total_count"] == 3 and body["has_more"] is False
    assert body["logs"][1] == {
        "seq": 2,
        "timestamp": at(2),
        "level": "info",
        "message": "hello",
        "context": {"job_id": "job_1", "step": "build", "stream": "stdout", "attempt": 1},
    }
    assert body["logs"][0]["context"] == {"job_id": "job_1", "step": None, "stream": "system", "attempt": 1}
    assert [e["level"] for e in body["logs"]] == ["info", "info", "warn"]
    assert body["logs"][0]["timestamp"].endswith("Z")


async def test_default_is_the_most_recent_100_in_order(coord: CoordinatorHandle, runner: Runner) -> None:
    await runner.lines(250)
    body = await page(coord, runner)
    assert seqs(body) == list(range(151, 251))
    assert body["total_count"] == 250 and body["has_more"] is True
    assert seqs(await page(coord, runner, limit=3)) == [248, 249, 250]


async def test_since_pages_forward_from_that_moment(coord: CoordinatorHandle, runner: Runner) -> None:
    await runner.lines(250)
    body = await page(coord, runner, since=at(100), limit=10)
    assert seqs(body) == list(range(100, 110))
    assert body["total_count"] == 151 and body["has_more"] is True
    last = await page(coord, runner, since=at(245), limit=10)
    assert seqs(last) == list(range(245, 251)) and last["has_more"] is False


async def test_until_is_exclusive_and_combines_with_since(coord: CoordinatorHandle, runner: Runner) -> None:
    await runner.lines(50)
    assert seqs(await page(coord, runner, until=at(4))) == [1, 2, 3]
    assert seqs(await page(coord, runner, since=at(10), until=at(13))) == [10, 11, 12]
    # Offsets other than Z are understood: T0 + 20 s is 22:13:40Z.
    assert seqs(await page(coord, runner, since="2023-11-14T23:13:40+01:00", limit=2)) == [20, 21]


async def test_level_is_a_minimum(coord: CoordinatorHandle, runner: Runner) -> None:
    for level in ("debug", "info", "warn", "error", "info", "error"):
        await runner.send({"level": level})
    assert seqs(await page(coord, runner, level="debug")) == [1, 2, 3, 4, 5, 6]
    assert seqs(await page(coord, runner, level="info")) == [2, 3, 4, 5, 6]
    assert seqs(await page(coord, runner, level="warn")) == [3, 4, 6]
    assert seqs(await page(coord, runner, level="error")) == [4, 6]


async def test_job_and_step_filters(coord: CoordinatorHandle, runner: Runner) -> None:
    await runner.send(
        {"job_id": "job_a", "step": "build"},
        {"job_id": "job_a", "step": "test"},
        {"job_id": "job_b", "step": "build"},
        {"job_id": "job_a", "step": "build"},
        {"job_id": None},
    )
    assert seqs(await page(coord, runner, job_id="job_a")) == [1, 2, 4]
    assert seqs(await page(coord, runner, job_id="job_a", step="build")) == [1, 4]
    assert seqs(await page(coord, runner, step="build")) == [1, 3, 4]
    body = await page(coord, runner, job_id="job_c")
    assert body == {"runner_id": runner.id, "logs": [], "total_count": 0, "has_more": False}


async def test_limit_bounds(coord: CoordinatorHandle, runner: Runner) -> None:
    await runner.lines(10_050)
    body = await page(coord, runner, limit=10_000)
    assert len(body["logs"]) == 10_000 and body["logs"][0]["seq"] == 51 and body["has_more"] is True
    for bad in ("10001", "0", "-1", "ten"):
        await expect_invalid(coord, runner, {"limit": bad}, "limit")


async def expect_invalid(coord: CoordinatorHandle, runner: Runner, query: dict[str, str], field: str) -> None:
    status, body = await coord.api.get(f"/runners/{runner.id}/logs?{urlencode(query)}")
    assert status == 400, (query, body)
    assert body["success"] is False
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert body["error"]["details"]["field"] == field


async def test_bad_parameters_are_400(coord: CoordinatorHandle, runner: Runner) -> None:
    await expect_invalid(coord, runner, {"since": "yesterday"}, "since")
    await expect_invalid(coord, runner, {"until": "2024-13-45T00:00:00Z"}, "until")
    await expect_invalid(coord, runner, {"since": at(10), "until": at(5)}, "since")
    await expect_invalid(coord, runner, {"level": "warning"}, "level")
    await expect_invalid(coord, runner, {"level": "fatal"}, "level")
    await expect_invalid(coord, runner, {"follow": "maybe"}, "follow")
    status, body = await coord.api.get(f"/runners/{runner.id}/logs", headers={"Last-Event-ID": "x", **SSE})
    assert status == 400 and body["error"]["details"]["field"] == "Last-Event-ID"


async def test_unknown_runner_is_404(coord: CoordinatorHandle) -> None:
    for query in ({}, {"follow": "true"}):
        status, body = await coord.api.get(f"/runners/runner_nope/logs?{urlencode(query)}")
        assert status == 404
        assert body["error"]["code"] == "RUNNER_NOT_FOUND"
        assert body["error"]["details"]["runner_id"] == "runner_nope"


async def test_authentication_is_required(coord: CoordinatorHandle, runner: Runner) -> None:
    anonymous = coord.client(api_key=None)
    status, body = await anonymous.get(f"/runners/{runner.id}/logs")
    assert status == 401 and body["error"]["code"] == "AUTHENTICATION_REQUIRED"
    # A runner's token is for its agent's routes: it reads no logs, not even its own runner's.
    assert (await runner.agent.get(f"/runners/{runner.id}/logs"))[0] == 403
    status, other = await coord.api.post(
        "/runners/register", {"name": "other", "type": "native", "host": "127.0.0.1", "port": 9}
    )
    status, body = await runner.agent.get(f"/runners/{other['runner_id']}/logs")
    assert status in (401, 403), body


async def test_masked_values_shorter_than_four_characters_are_refused(coord: CoordinatorHandle, runner: Runner) -> None:
    job = {"name": "j", "steps": [{"name": "s", "run": "true", "env": {"PIN": "12"}}], "environment": {"KEY": "abc"}}
    for masked, name in ((["KEY"], "KEY"), (["PIN"], "PIN"), (["NOPE"], "NOPE")):
        status, body = await coord.api.post(f"/runners/{runner.id}/jobs", {**job, "masked": masked})
        assert status == 400, body
        assert body["error"]["code"] == "INVALID_REQUEST"
        assert f"'{name}'" in body["error"]["message"]
        assert body["error"]["details"]["field"] == "masked"
    status, body = await coord.api.post(
        f"/runners/{runner.id}/jobs", {**job, "environment": {"KEY": "abcd"}, "masked": ["KEY"]}
    )
    assert status == 201, body
    status, body = await coord.api.post(f"/runners/{runner.id}/jobs", {**job, "on_log_limit": "explode"})
    assert status == 400 and body["error"]["details"]["field"] == "on_log_limit"


# --- the stream -------------------------------------------------------------------------------------------------

SSE = {"Accept": "text/event-stream"}


@dataclass
class Event:
    id: str | None
    event: str | None
    data: Any


@dataclass
class Stream:
    """A Server-Sent Events client that parses the framing itself (no SSE library in between)."""

    response: aiohttp.ClientResponse
    comments: list[str] = field(default_factory=list)

    async def next(self, timeout: float = 5.0) -> Event | None:
        """The next event, or None at the end of the stream."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n")
                if not line:
                    if fields:
                        return Event(fields.get("id"), fields.get("event"), json.loads(fields["data"]))
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value

    async def take(self, count: int) -> list[Event]:
        events = []
        for _ in range(count):
            event = await self.next()
            assert event is not None, f"stream ended after {len(events)} of {count} events"
            events.append(event)
        return events


@pytest.fixture
async def open_stream(coord: CoordinatorHandle) -> AsyncIterator[Any]:
    session = aiohttp.ClientSession()
    responses: list[aiohttp.ClientResponse] = []

    async def open_(runner: Runner, headers: dict[str, str] | None = None, **query: Any) -> Stream:
        response = await session.get(
            f"{coord.api_url}/runners/{runner.id}/logs",
            params={"follow": "true", **query},
            headers={"X-API-Key": coord.api.api_key or "", **(headers or {})},
        )
        responses.append(response)
        assert response.status == 200, await response.text()
        return Stream(response)

    try:
        yield open_
    finally:
        for response in responses:
            response.close()
        await session.close()


async def test_follow_sends_the_backlog_then_live_entries(
    coord: CoordinatorHandle, runner: Runner, open_stream: Any
) -> None:
    await runner.lines(3, job_id="job_1")
    stream = await open_stream(runner)
    assert stream.response.headers["Content-Type"] == "text/event-stream"
    backlog = await stream.take(3)
    assert [(e.id, e.event) for e in backlog] == [("1", "log"), ("2", "log"), ("3", "log")]
    assert backlog[0].data["message"] == "line 1" and backlog[0].data["context"]["job_id"] == "job_1"
    assert set(backlog[0].data) == {"seq", "timestamp", "level", "message", "context"}
    await runner.lines(2)
    live = await stream.take(2)
    assert [e.data["seq"] for e in live] == [4, 5]


async def test_accept_header_alone_streams_with_the_last_limit_entries(
    coord: CoordinatorHandle, runner: Runner, open_stream: Any
) -> None:
    await runner.lines(30)
    stream = await open_stream(runner, headers=SSE, follow="false", limit=5)
    assert [e.data["seq"] for e in await stream.take(5)] == [26, 27, 28, 29, 30]
    await runner.lines(1)
    assert (await stream.take(1))[0].data["seq"] == 31


async def test_keepalive_comments_arrive_periodically(
    coord: CoordinatorHandle, runner: Runner, open_stream: Any
) -> None:
    stream = await open_stream(runner)
    started = time.monotonic()
    async with asyncio.timeout(5):
        while len(stream.comments) < 3:
            line = await stream.response.content.readline()
            if line.startswith(b":"):
                stream.comments.append(line.decode())
    # Three comments at a 0.1 s interval: about 0.3 s, and certainly not the 15 s default.
    assert time.monotonic() - started < 2.0


async def test_last_event_id_resumes_after_that_entry(
    coord: CoordinatorHandle, runner: Runner, open_stream: Any
) -> None:
    await runner.lines(10)
    stream = await open_stream(runner, headers={"Last-Event-ID": "7"}, limit=2)
    assert [e.data["seq"] for e in await stream.take(3)] == [8, 9, 10]
    await runner.lines(1)
    assert (await stream.take(1))[0].id == "11"
    # Resuming from 0 replays everything, whatever the limit.
    replay = await open_stream(runner, headers={"Last-Event-ID": "0"}, limit=1)
    assert [e.data["seq"] for e in await replay.take(11)] == list(range(1, 12))


async def test_filters_apply_to_backlog_and_live(coord: CoordinatorHandle, runner: Runner, open_stream: Any) -> None:
    await runner.send({"level": "info"}, {"level": "error", "job_id": "job_1"}, {"level": "error", "job_id": "job_2"})
    stream = await open_stream(runner, level="error", job_id="job_1")
    assert [e.data["seq"] for e in await stream.take(1)] == [2]
    await runner.send({"level": "error", "job_id": "job_2"}, {"level": "warn", "job_id": "job_1"})
    await runner.send({"level": "error", "job_id": "job_1"})
    assert [e.data["seq"] for e in await stream.take(1)] == [6]


async def test_since_streams_everything_from_then(coord: CoordinatorHandle, runner: Runner, open_stream: Any) -> None:
    await runner.lines(1500)  # more than one catch-up page
    stream = await open_stream(runner, since=at(200), limit=1)
    assert [e.data["seq"] for e in await stream.take(1301)] == list(range(200, 1501))


async def test_resent_batches_are_not_sent_twice(coord: CoordinatorHandle, runner: Runner, open_stream: Any) -> None:
    await runner.lines(3)
    stream = await open_stream(runner)
    await stream.take(3)
    # The agent resends 2..5 (its acknowledgement for 2..3 was lost): 4 and 5 are new, once each.
    await runner.send({"seq": 2}, {"seq": 3}, {"seq": 4}, {"seq": 5})
    await runner.send({"seq": 6})
    assert [e.data["seq"] for e in await stream.take(3)] == [4, 5, 6]


async def test_a_follower_that_falls_behind_catches_up_from_the_database(
    coord: CoordinatorHandle, runner: Runner, open_stream: Any
) -> None:
    stream = await open_stream(runner)
    await runner.lines(1)
    await stream.take(1)  # the stream is live now
    await runner.lines(QUEUE_LIMIT * 3)  # one batch more than a follower may queue
    await runner.lines(5)
    assert [e.data["seq"] for e in await stream.take(QUEUE_LIMIT * 3 + 5)] == list(range(2, QUEUE_LIMIT * 3 + 7))


def _stream_tasks() -> list[asyncio.Task[Any]]:
    """Tasks serving log streams: the aiohttp-sse keep-alive task and our handler."""
    names = ("EventSourceResponse._ping", "follow", "get_logs")
    return [t for t in asyncio.all_tasks() if not t.done() and any(name in repr(t.get_coro()) for name in names)]


async def test_client_disconnect_ends_the_stream_without_leaking_tasks(
    coord: CoordinatorHandle, runner: Runner, open_stream: Any
) -> None:
    stream = await open_stream(runner)
    await runner.lines(1)
    await stream.take(1)
    feed = coord.app[keys.LOG_FEED] if coord.app else None
    assert feed is not None and feed.follower_count == 1
    assert _stream_tasks()
    stream.response.close()

    async def ended() -> bool:
        return feed.follower_count == 0 and not _stream_tasks()

    await wait_for(ended, timeout=5, what="the stream's handler and keep-alive task to end")
    await runner.lines(1)  # publishing to nobody is fine


async def test_shutdown_ends_streams_cleanly(coord: CoordinatorHandle, runner: Runner, open_stream: Any) -> None:
    streams = [await open_stream(runner) for _ in range(3)]
    await runner.lines(1)
    for stream in streams:
        await stream.take(1)
    started = time.monotonic()
    await coord.stop()
    # Streams end at once, not after the server's shutdown timeout (60 s).
    assert time.monotonic() - started < 5
    for stream in streams:
        assert await stream.next(timeout=2) is None
    assert not _stream_tasks()
