"""What lets several coordinators on one PostgreSQL database serve one fleet, chosen and connected in one place.

:func:`fleet_services` picks, for the configured engine, the implementation of each seam:

============================  ================================  =========================================
seam                          one coordinator (SQLite)           a fleet (PostgreSQL)
============================  ================================  =========================================
``coordinator.leadership``    :class:`SoleLeader`                :class:`AdvisoryLockLeadership`
``coordinator.bus``           :class:`LocalBus`                  :class:`PostgresBus`
``coordinator.fleet_keys``    :class:`StateDirKeys`              :class:`DatabaseKeys`
``coordinator.ratelimit``     :class:`MemoryCounters`            :class:`DatabaseCounters`
============================  ================================  =========================================

:meth:`FleetServices.connect` hands them to the components that use them; :meth:`FleetServices.open` adopts
the fleet's generated keys (credentials, the sealing key) and starts the bus and the leadership campaign.
Wiring, in a cleanup context of ``coordinator.app`` (``database``: the PostgreSQL store's database, or None)::

    services = scaleout.fleet_services(app, database)
    services.connect(app)
    app[keys.LEADERSHIP] = services.leadership
    if (credentials := await services.open(app[keys.CONFIG], sealer)) is not None:
        app[keys.CREDENTIALS] = credentials
    yield
    await services.close()
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from coordinator import auth, keys, pg
from coordinator.auth import Credentials
from coordinator.bus import BusHandlers, FleetBus, LocalBus, PostgresBus
from coordinator.config import CoordinatorConfig
from coordinator.fleet_keys import DatabaseKeys, KeySource, StateDirKeys
from coordinator.leadership import AdvisoryLockLeadership, Leadership, SoleLeader
from coordinator.ratelimit import Counters, DatabaseCounters, MemoryCounters
from coordinator.sealing import Sealer


@dataclass
class FleetServices:
    leadership: Leadership
    bus: FleetBus
    keys: KeySource
    counters: Counters
    shared: bool
    """Whether the keys come from a shared database (and must be adopted at startup)."""

    def connect(self, app: web.Application) -> None:
        """Hand each seam to its users: the bus to the agent client, the hub and the dispatcher's wake-ups, the
        counters to the rate limiter. (``keys.LEADERSHIP`` is the caller's to set, at startup.)"""
        agents, hub, dispatcher = app[keys.AGENTS], app[keys.HUB], app[keys.DISPATCHER]
        self.bus.handlers = BusHandlers(
            call=agents.call_here, wake=dispatcher.kick, event=hub.deliver, logs=app[keys.LOG_FEED].publish
        )
        agents.bus = self.bus
        hub.relay = self.bus.publish_event if self.shared else None
        app[keys.RATE_LIMITER].counters = self.counters

    async def open(self, config: CoordinatorConfig, sealer: Sealer | None = None) -> Credentials | None:
        """Adopt the fleet's keys (``sealer`` takes the fleet's sealing key), start the bus and the leadership
        campaign. Returns the fleet's credentials for ``keys.CREDENTIALS`` (None alone: the state directory's,
        loaded at startup, stand)."""
        credentials = None
        if self.shared:
            if sealer is not None:
                await sealer.adopt(self.keys)
            credentials = await auth.load_shared_credentials(config, self.keys)
        await self.bus.open()
        await self.leadership.open()
        return credentials

    async def close(self) -> None:
        await self.leadership.close()
        await self.bus.close()


def fleet_services(app: web.Application, database: pg.Connections | None) -> FleetServices:
    """The fleet seams for a coordinator alone (``database`` None: SQLite) or on a shared PostgreSQL database."""
    state_dir = app[keys.CONFIG].state_dir
    if database is None:
        return FleetServices(SoleLeader(), LocalBus(), StateDirKeys(state_dir), MemoryCounters(), shared=False)
    return FleetServices(
        AdvisoryLockLeadership(database.url),
        PostgresBus(database),
        DatabaseKeys(database, state_dir),
        DatabaseCounters(database),
        shared=True,
    )
