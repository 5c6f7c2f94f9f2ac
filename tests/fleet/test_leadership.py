"""One leader per fleet: the session advisory lock on PostgreSQL, always the one coordinator on SQLite."""

from __future__ import annotations

import asyncio

from coordinator.leadership import AdvisoryLockLeadership, SoleLeader
from tests.helpers import wait_for


async def _true(value: bool) -> bool:
    return value


async def test_a_coordinator_alone_always_leads_and_runs_its_duties() -> None:
    ran = asyncio.Event()

    async def duty() -> None:
        ran.set()
        await asyncio.Event().wait()

    leadership = SoleLeader()
    leadership.while_leader("duty", duty)
    await leadership.open()
    try:
        assert leadership.leader
        await asyncio.wait_for(ran.wait(), 5)
    finally:
        await leadership.close()
    assert not leadership.leader


async def test_one_of_two_coordinators_leads_and_the_other_takes_over_when_it_closes(postgres_url: str) -> None:
    running: dict[str, int] = {"a": 0, "b": 0}

    def duty(name: str) -> AdvisoryLockLeadership:
        leadership = AdvisoryLockLeadership(postgres_url, retry_interval=0.1)

        async def work() -> None:
            running[name] += 1
            try:
                await asyncio.Event().wait()
            finally:
                running[name] -= 1

        leadership.while_leader("liveness", work)
        return leadership

    a, b = duty("a"), duty("b")
    await a.open()
    await b.open()
    try:
        assert a.leader and not b.leader
        await wait_for(lambda: _true(running["a"] == 1), 5, what="the leader's duty to start")
        # b keeps trying and never leads while a holds the lock.
        tried = b.attempts
        await wait_for(lambda: _true(b.attempts >= tried + 3), 5, what="the other to try the lock again")
        assert not b.leader and running == {"a": 1, "b": 0}
        await a.close()
        assert running["a"] == 0
        await wait_for(lambda: _true(b.leader and running["b"] == 1), 5, what="the other to take over")
    finally:
        await a.close()
        await b.close()
    assert running == {"a": 0, "b": 0}


async def test_leadership_is_lost_when_its_connection_drops(postgres_url: str) -> None:
    import asyncpg

    a = AdvisoryLockLeadership(postgres_url, retry_interval=0.1)
    b = AdvisoryLockLeadership(postgres_url, retry_interval=0.1)
    await a.open()
    await b.open()
    try:
        assert a.leader and not b.leader
        admin = await asyncpg.connect(postgres_url)
        try:  # the server ends a's session (as a network partition or a restart of its host would)
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert killed == 1
        await wait_for(lambda: _true(b.leader != a.leader), 5, what="exactly one leader again")
        assert b.leader or a.leader
    finally:
        await a.close()
        await b.close()
