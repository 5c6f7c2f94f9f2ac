"""The fleet bus on a real PostgreSQL server: two coordinators' buses on one database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from coordinator.bus import BusHandlers, PostgresBus
from coordinator.store.postgres.database import PostgresDatabase
from shared.errors import InvalidRequest, RunnerUnavailable
from shared.models import AgentEvent, JobEvent, LogEvent, StepEvent
from tests.fleet.pg import fleet_database
from tests.helpers import wait_for


@contextlib.asynccontextmanager
async def opened(pool: PostgresDatabase, **kw: Any) -> AsyncIterator[PostgresBus]:
    bus = PostgresBus(pool, **kw)
    await bus.open()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
async def pool(postgres_url: str) -> AsyncIterator[PostgresDatabase]:
    async with fleet_database(postgres_url) as pool:
        yield pool


async def _true(value: bool) -> bool:
    return value


async def _echo(runner_id: str, kind: str, body: Any, timeout: float) -> Any:
    if kind == "refuse":
        raise InvalidRequest("no such thing", field="name")
    return {"runner_id": runner_id, "kind": kind, "body": body}


async def _held(bus: PostgresBus, runner_id: str) -> bool:
    return await bus.holder(runner_id) is not None


async def test_a_call_goes_to_the_coordinator_holding_the_channel_and_its_answer_comes_back(
    pool: PostgresDatabase,
) -> None:
    async with opened(pool) as a, opened(pool) as b:
        b.handlers = BusHandlers(call=_echo)
        b.channel_opened("runner_1")
        await wait_for(lambda: _held(a, "runner_1"), 5, what="the channel's record")
        assert await a.holder("runner_1") == b.coordinator_id
        answer = await a.call("runner_1", "status", {"verbose": True}, 2.0)
        assert answer == {"runner_id": "runner_1", "kind": "status", "body": {"verbose": True}}
        with pytest.raises(InvalidRequest) as refused:  # the agent's typed error comes back as itself
            await a.call("runner_1", "refuse", None, 2.0)
        assert refused.value.status == 400 and refused.value.details["field"] == "name"
        # Many at once: each answer reaches its own caller.
        answers = await asyncio.gather(*(a.call("runner_1", "status", {"n": i}, 2.0) for i in range(50)))
        assert [answer["body"]["n"] for answer in answers] == list(range(50))


async def test_payloads_over_the_notify_limit_go_through_a_table_row(pool: PostgresDatabase) -> None:
    big = {"lines": ["x" * 1000 + str(i) for i in range(100)]}  # ~100 kB, far over 8000 bytes
    async with opened(pool) as a, opened(pool) as b:
        b.handlers = BusHandlers(call=_echo)
        b.channel_opened("runner_1")
        await wait_for(lambda: _held(a, "runner_1"), 5, what="the channel's record")
        answer = await a.call("runner_1", "job", big, 5.0)
        assert answer["body"] == big
        async with pool.connection() as conn:  # a direct message's row is deleted by its one reader
            assert await conn.fetchval("SELECT count(*) FROM fleet_messages") == 0


async def test_no_holder_or_a_gone_one_is_runner_unavailable_at_once(pool: PostgresDatabase, postgres_url: str) -> None:
    async with opened(pool) as a:
        started = time.monotonic()
        with pytest.raises(RunnerUnavailable):
            await a.call("runner_nowhere", "status", None, 10.0)
        async with opened(pool) as b:
            b.handlers = BusHandlers(call=_echo)
            b.channel_opened("runner_1")
            await wait_for(lambda: _held(a, "runner_1"), 5, what="the channel's record")
            b_pid = b._listen.get_server_pid() if b._listen is not None else 0
            # The holder's session ends without a word (its process was killed): its row stays, stale.
            admin = await asyncpg.connect(postgres_url)
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", b_pid)
            finally:
                await admin.close()
            await wait_for(lambda: _not(_held(a, "runner_1")), 5, what="the holder's lock to go")
            async with pool.connection() as conn:
                assert await conn.fetchval("SELECT count(*) FROM coordinator_channels") == 1  # still there
            with pytest.raises(RunnerUnavailable):
                await a.call("runner_1", "status", None, 10.0)
        assert time.monotonic() - started < 5.0  # never the 10 s the calls would have waited


async def test_a_holder_that_does_not_answer_is_runner_unavailable_within_the_bound(pool: PostgresDatabase) -> None:
    async def silent(runner_id: str, kind: str, body: Any, timeout: float) -> Any:
        await asyncio.Event().wait()

    async with opened(pool, forward_margin=0.2) as a, opened(pool) as b:
        b.handlers = BusHandlers(call=silent)
        b.channel_opened("runner_1")
        await wait_for(lambda: _held(a, "runner_1"), 5, what="the channel's record")
        started = time.monotonic()
        with pytest.raises(RunnerUnavailable) as unavailable:
            await a.call("runner_1", "status", None, 0.3)
        assert 0.5 <= time.monotonic() - started < 3.0
        assert "did not answer" in unavailable.value.message


async def test_a_closed_channel_forgets_its_holder_and_a_newer_one_elsewhere_wins(pool: PostgresDatabase) -> None:
    async with opened(pool) as a, opened(pool) as b:
        b.channel_opened("runner_1")
        await wait_for(lambda: _held(a, "runner_1"), 5, what="the channel's record")
        a.channel_opened("runner_1")  # the agent reconnected to a
        await wait_for(lambda: _holder_is(a, "runner_1", a.coordinator_id), 5, what="a to hold it")
        b.channel_closed("runner_1")  # b's old connection ends after: a's record stays
        b.channel_opened("runner_2")
        await wait_for(lambda: _held(a, "runner_2"), 5, what="b's later record")
        assert await a.holder("runner_1") == a.coordinator_id
        with pytest.raises(RunnerUnavailable):  # held here but not in the link table: never sent to itself
            await a.call("runner_1", "status", None, 1.0)
    async with pool.connection() as conn:  # closed buses remove their records
        assert await conn.fetchval("SELECT count(*) FROM coordinator_channels") == 0


async def test_wake_ups_reach_the_holders_dispatcher(pool: PostgresDatabase) -> None:
    woken: list[str] = []
    async with opened(pool) as a, opened(pool) as b:
        b.handlers = BusHandlers(wake=woken.append)
        b.channel_opened("runner_1")
        await wait_for(lambda: _held(a, "runner_1"), 5, what="the channel's record")
        a.wake("runner_1")
        a.wake("runner_nowhere")  # no holder: nothing to wake (the job waits for the agent's next hello)
        await wait_for(lambda: _true(woken == ["runner_1"]), 5, what="b's dispatcher to be woken")


async def test_events_and_logs_reach_every_other_coordinator_in_order(pool: PostgresDatabase) -> None:
    seen: dict[str, list[Any]] = {"a": [], "b": [], "c": []}

    def handlers(name: str) -> BusHandlers:
        return BusHandlers(
            event=lambda event: seen[name].append(event["n"]),
            logs=lambda runner_id, events: seen[name].extend((runner_id, e.kind, e.seq) for e in events),
        )

    now = "2026-01-01T00:00:00Z"
    batch: list[AgentEvent] = [
        LogEvent(seq=1, at=now, level="info", message="x" * 9000, job_id="job_1", stream="stdout"),  # over 8000
        StepEvent(seq=2, at=now, job_id="job_1", attempt=0, index=0, name="s", status="running"),  # not for logs
        JobEvent(seq=3, at=now, job_id="job_1", attempt=0, status="completed", final=True),
    ]
    async with opened(pool) as a, opened(pool) as b, opened(pool) as c:
        for bus, name in ((a, "a"), (b, "b"), (c, "c")):
            bus.handlers = handlers(name)
        for n in range(200):
            a.publish_event({"type": "runner_updated", "n": n})
        a.publish_logs("runner_1", batch)
        expected = [*range(200), ("runner_1", "log", 1), ("runner_1", "job", 3)]
        await wait_for(lambda: _true(seen["b"] == expected and seen["c"] == expected), 10, what="b and c")
        assert seen["a"] == []  # never back to its sender


async def _holder_is(bus: PostgresBus, runner_id: str, coordinator_id: str) -> bool:
    return await bus.holder(runner_id) == coordinator_id


async def _not(probe: Any) -> bool:
    return not await probe


async def test_a_call_waiting_when_its_coordinator_shuts_down_ends_as_runner_unavailable(
    pool: PostgresDatabase,
) -> None:
    arrived = asyncio.Event()

    async def silent(runner_id: str, kind: str, body: Any, timeout: float) -> Any:
        arrived.set()
        await asyncio.Event().wait()

    async with opened(pool) as b:
        b.handlers = BusHandlers(call=silent)
        b.channel_opened("runner_1")
        a = PostgresBus(pool)
        await a.open()
        try:
            await wait_for(lambda: _held(a, "runner_1"), 5, what="the channel's record")
            waiting = asyncio.ensure_future(a.call("runner_1", "status", None, 30.0))
            await asyncio.wait_for(arrived.wait(), 5)
        finally:
            await a.close()
        with pytest.raises(RunnerUnavailable):
            await asyncio.wait_for(waiting, 5)
