"""Rate limits counted in the shared database: two coordinators' limiters refuse past one limit between them."""

from __future__ import annotations

import asyncio

import asyncpg

from coordinator.config import RateLimits
from coordinator.ratelimit import DatabaseCounters, RateLimiter, Rule
from tests.fleet.pg import fleet_database

MINUTE = 1_000_000 * 60.0


async def test_two_limiters_on_one_database_share_each_limit(postgres_url: str) -> None:
    now = [MINUTE + 1.0]
    rule = Rule("registration", 4, lambda request: "ip")
    async with fleet_database(postgres_url) as a_pool, fleet_database(postgres_url) as b_pool:
        a = RateLimiter(RateLimits(), clock=lambda: now[0], counters=DatabaseCounters(a_pool))
        b = RateLimiter(RateLimits(), clock=lambda: now[0], counters=DatabaseCounters(b_pool))
        decisions = [await (a if i % 2 else b).hit(rule, "10.0.0.1") for i in range(5)]
        assert [d.allowed for d in decisions] == [True, True, True, True, False]
        assert [d.remaining for d in decisions] == [3, 2, 1, 0, 0]
        assert not (await a.hit(rule, "10.0.0.1")).allowed
        assert (await a.hit(rule, "10.0.0.2")).allowed  # another client has its own count
        assert (await b.hit(Rule("status", 4, lambda request: "ip"), "10.0.0.1")).allowed  # another rule too
        # Requests at once from both: exactly the limit gets through.
        burst = await asyncio.gather(*((a if i % 2 else b).hit(rule, "10.0.0.3") for i in range(12)))
        assert sum(d.allowed for d in burst) == 4
        now[0] += 60.0  # the next window: counted afresh, and the past window's rows go
        fresh = await b.hit(rule, "10.0.0.1")
        assert fresh.allowed and fresh.remaining == 3 and fresh.reset == MINUTE + 120
    conn = await asyncpg.connect(postgres_url)
    try:
        windows = await conn.fetch("SELECT DISTINCT window_start FROM rate_limit_counters")
    finally:
        await conn.close()
    assert [row["window_start"] for row in windows] == [int(MINUTE + 60)]
