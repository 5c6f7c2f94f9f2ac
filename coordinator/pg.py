"""What the fleet modules (``coordinator.bus``, ``coordinator.leadership``, ``coordinator.fleet_keys``, the shared
rate-limit counters) need from PostgreSQL, in one place.

- :class:`Connections`: pooled connections, one at a time. ``coordinator.store.postgres.database.PostgresDatabase``
  is one; its ``connection()`` turns connection-level failures into ``STORAGE_UNAVAILABLE``.
- :func:`dedicated`: a connection of its own, outside any pool, for what lives with a session: ``LISTEN``
  and session advisory locks.

asyncpg is imported here lazily, on first use, so a coordinator on SQLite never loads it.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncpg

CONNECT_TIMEOUT = 10.0


class Connections(Protocol):
    """Pooled connections to the fleet's database."""

    url: str
    """The ``postgresql://`` URL, for modules that open a dedicated connection."""

    def connection(self) -> AbstractAsyncContextManager[Any]:
        """A pooled ``asyncpg.Connection``, outside a transaction."""
        ...


async def dedicated(url: str, timeout: float = CONNECT_TIMEOUT) -> asyncpg.Connection:
    """A connection of its own (not from a pool): for ``LISTEN`` and session advisory locks."""
    import asyncpg

    return await asyncpg.connect(url, timeout=timeout)


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a dropped or refused connection raises (for loops that reconnect)."""
    import asyncpg

    return (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)
