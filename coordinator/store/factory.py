"""Every store of the coordinator, built for the configured engine in one place.

``database`` names the engine: a file path is SQLite (the embedded default), a ``postgresql://`` URL is
PostgreSQL. :func:`build` returns one :class:`Stores` bundle (the registry and job index, fleet jobs, metric
history, logs, audit storage) whose members implement the protocols of ``coordinator.store.base`` and
``coordinator.store.protocols``; the application hands them to handlers and tasks through its keys, so nothing
else knows which engine it runs on. An engine is one builder in :data:`ENGINES`; the PostgreSQL modules (and
asyncpg) are imported only when that engine is configured.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from coordinator import pg
from coordinator.config import CoordinatorConfig, DatabaseEngine
from coordinator.sealing import Sealer
from coordinator.store.base import Store
from coordinator.store.protocols import AuditStorage, FleetStore, LogStore, MetricsStore


@dataclass(frozen=True)
class Stores:
    registry: Store
    fleet: FleetStore
    metrics: MetricsStore
    logs: LogStore
    audit: AuditStorage
    open: Callable[[], Awaitable[None]] = field(repr=False)
    """Connects (and migrates the schema) before any member is used."""
    close: Callable[[], Awaitable[None]] = field(repr=False)
    """Writes what the members deferred (heartbeats) and disconnects."""
    sealer: Sealer | None = None
    """Seals the masked values of stored jobs (a fleet's coordinators adopt one shared key at start)."""
    shared: pg.Connections | None = None
    """The database several coordinators share (PostgreSQL), for the fleet seams (``coordinator.scaleout``);
    None for an embedded database that serves one coordinator."""


Builder = Callable[[CoordinatorConfig, Sealer | None], Stores]


def _sqlite(config: CoordinatorConfig, sealer: Sealer | None) -> Stores:
    from coordinator.audit import SqliteAuditStorage
    from coordinator.store.fleet import FleetStore as SqliteFleetStore
    from coordinator.store.logs import LogStore as SqliteLogStore
    from coordinator.store.metrics import MetricsStore as SqliteMetricsStore
    from coordinator.store.metrics import Retention
    from coordinator.store.sqlite import SqliteStore

    registry = SqliteStore(config.database_path, sealer)
    db = registry.db  # one file, one connection thread: the registry opens and closes it
    return Stores(
        registry=registry,
        fleet=SqliteFleetStore(db, sealer),
        metrics=SqliteMetricsStore(db, Retention.of(config.metrics)),
        logs=SqliteLogStore(db),
        audit=SqliteAuditStorage(db),
        open=registry.open,
        close=registry.close,
        sealer=sealer,
    )


def _postgresql(config: CoordinatorConfig, sealer: Sealer | None) -> Stores:
    from coordinator.store.metrics import Retention
    from coordinator.store.postgres.audit import PostgresAuditStorage
    from coordinator.store.postgres.database import PostgresDatabase
    from coordinator.store.postgres.fleet import PostgresFleetStore
    from coordinator.store.postgres.logs import PostgresLogStore
    from coordinator.store.postgres.metrics import PostgresMetricsStore
    from coordinator.store.postgres.registry import PostgresStore

    pool = config.database_pool
    db = PostgresDatabase(config.database_url, pool.min_size, pool.max_size)
    registry = PostgresStore(db, sealer)

    async def open_() -> None:
        await db.open()
        await registry.open()

    async def close() -> None:
        try:
            await registry.close()
        finally:
            await db.close()

    return Stores(
        registry=registry,
        fleet=PostgresFleetStore(db, sealer),
        metrics=PostgresMetricsStore(db, Retention.of(config.metrics)),
        logs=PostgresLogStore(db),
        audit=PostgresAuditStorage(db),
        open=open_,
        close=close,
        sealer=sealer,
        shared=db,
    )


ENGINES: dict[DatabaseEngine, Builder] = {"sqlite": _sqlite, "postgresql": _postgresql}


def build(config: CoordinatorConfig, sealer: Sealer | None) -> Stores:
    """The stores for ``config.database`` (not yet open: see :attr:`Stores.open`)."""
    return ENGINES[config.database_engine](config, sealer)
