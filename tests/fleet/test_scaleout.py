"""The fleet seams wired into real coordinators (``coordinator.scaleout``), on one PostgreSQL database.

Each coordinator here keeps its own SQLite registry (the PostgreSQL store has tests of its own); what they share
is what ``scaleout`` wires: the bus (live events), the rate-limit counters, the generated keys, leadership.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from coordinator import keys, scaleout
from coordinator.auth import Credentials
from coordinator.leadership import AdvisoryLockLeadership
from coordinator.store.postgres.database import PostgresDatabase
from tests.conftest import API_KEY, CoordinatorHandle, coordinator_config, running_coordinator
from tests.fleet.pg import fleet_database
from tests.helpers import Api, registration, wait_for


@dataclass
class Member:
    """A running coordinator, rewired onto the fleet's database."""

    handle: CoordinatorHandle
    services: scaleout.FleetServices
    credentials: Credentials | None

    @property
    def api(self) -> Api:
        return self.handle.api

    @property
    def api_url(self) -> str:
        return self.handle.api_url


@contextlib.asynccontextmanager
async def two_coordinators(
    postgres_url: str, tmp_path: Path, **overrides: object
) -> AsyncIterator[tuple[Member, Member]]:
    async with fleet_database(postgres_url) as pool, contextlib.AsyncExitStack() as stack:
        members = []
        for name in ("a", "b"):
            config = coordinator_config(tmp_path / name, **overrides)
            handle = await stack.enter_async_context(running_coordinator(config))
            members.append(await stack.enter_async_context(_on_the_fleet(handle, pool)))
        yield members[0], members[1]


@contextlib.asynccontextmanager
async def _on_the_fleet(handle: CoordinatorHandle, pool: PostgresDatabase) -> AsyncIterator[Member]:
    assert handle.app is not None
    services = scaleout.fleet_services(handle.app, pool)
    services.connect(handle.app)
    credentials = await services.open(handle.config)
    try:
        yield Member(handle, services, credentials)
    finally:
        await services.close()


async def test_a_websocket_follower_on_one_coordinator_sees_the_events_published_on_the_other(
    postgres_url: str, tmp_path: Path
) -> None:
    async with two_coordinators(postgres_url, tmp_path) as (a, b), aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{b.api_url}/runners/ws", headers={"X-API-Key": API_KEY}) as ws:
            hub = b.handle.app[keys.HUB] if b.handle.app is not None else None
            await wait_for(lambda: _true(hub is not None and hub.client_count == 1), 5, what="b's follower")
            status, body = await a.api.post("/runners/register", registration(name="seen-on-b"))
            assert status == 201, body

            async def registered() -> dict[str, object] | None:
                event = json.loads((await ws.receive(timeout=10)).data)
                return event if event["type"] == "runner_registered" else None

            event = await wait_for(registered, 10, interval=0, what="b's follower to see a's registration")
            assert event["runner_id"] == body["runner_id"]


async def test_rate_limits_count_the_requests_to_both_coordinators_together(postgres_url: str, tmp_path: Path) -> None:
    limits = {"enabled": True, "registration_per_minute": 3}
    async with two_coordinators(postgres_url, tmp_path, rate_limits=limits) as (a, b):
        statuses = []
        for i in range(4):
            status, _ = await (a if i % 2 else b).api.post("/runners/register", registration(name=f"r{i}"))
            statuses.append(status)
        assert statuses == [201, 201, 201, 429]


async def test_generated_keys_are_the_fleets_and_one_coordinator_leads(postgres_url: str, tmp_path: Path) -> None:
    unset = {"auth": {"api_key": None, "registration_key": None}}
    async with two_coordinators(postgres_url, tmp_path, **unset) as (a, b):
        a_keys, b_keys = a.credentials, b.credentials
        assert a_keys is not None and b_keys is not None
        assert (a_keys.api_key, a_keys.registration_key) == (b_keys.api_key, b_keys.registration_key)
        assert (a_keys.jwt_secret, a_keys.api_key[:3]) == (b_keys.jwt_secret, "rk_")
        # a started first with keys of its own, which became the fleet's; b's copy is now the fleet's
        assert (tmp_path / "b" / "admin-api-key").read_text().strip() == a_keys.api_key
        assert (tmp_path / "b" / "admin-api-key.replaced").exists()
        leaders = [member.services.leadership for member in (a, b)]
        assert all(isinstance(leader, AdvisoryLockLeadership) for leader in leaders)
        assert sorted(leader.leader for leader in leaders) == [False, True]


async def _true(value: bool) -> bool:
    return value
