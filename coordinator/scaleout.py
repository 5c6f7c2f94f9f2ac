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
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from coordinator import auth, keys, pg
from coordinator.bus import BusHandlers, FleetBus, LocalBus, PostgresBus
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
        """Hand each seam to its users: the agent client and hub to the bus, the bus to the dispatcher's wake-ups,
        the counters to the rate limiter; and make them reachable through ``keys.LEADERSHIP``."""
        agents, hub, dispatcher = app[keys.AGENTS], app[keys.HUB], app[keys.DISPATCHER]
        self.bus.handlers = BusHandlers(
            call=agents.call_here, wake=dispatcher.kick, event=hub.deliver, logs=app[keys.LOG_FEED].publish
        )
        agents.bus = self.bus
        hub.relay = self.bus.publish_event if self.shared else None
        app[keys.RATE_LIMITER].counters = self.counters
        app[keys.LEADERSHIP] = self.leadership

    async def open(self, app: web.Application, sealer: Sealer | None = None) -> None:
        if self.shared:
            if sealer is not None:
                await sealer.adopt(self.keys)
            app[keys.CREDENTIALS] = await auth.load_shared_credentials(app[keys.CONFIG], self.keys)
        await self.bus.open()
        await self.leadership.open()

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
