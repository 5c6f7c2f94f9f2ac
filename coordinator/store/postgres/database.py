"""A bounded asyncpg pool on one PostgreSQL database, with its schema migrated once however many start.

Each store operation takes one pooled connection for one transaction (:meth:`PostgresDatabase.transaction`);
reads that need no transaction take :meth:`PostgresDatabase.connection`. Migrations (``schema.MIGRATIONS``) are
numbered by the ``schema_version`` table and applied in :meth:`PostgresDatabase.open` while holding a session
advisory lock, so several coordinators started at once migrate exactly once: the first applies them, the others
wait on the lock and then find nothing left to do.

When the server cannot be reached, or refuses writes (disk full, read-only, too many connections), an operation
raises :class:`~shared.errors.StorageUnavailable` (503 ``STORAGE_UNAVAILABLE``), its transaction rolled back, so
the client knows to retry; the problem is remembered until an operation succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import asyncpg
import structlog

from coordinator.config import without_password
from coordinator.store.postgres.schema import MIGRATIONS
from shared.config import ConfigError
from shared.errors import StorageUnavailable

if TYPE_CHECKING:
    Connection = asyncpg.Connection[asyncpg.Record]
else:
    Connection = asyncpg.Connection

log = structlog.get_logger(__name__)

MIGRATION_LOCK = 0x7275_7374_6369_0001
"""The advisory lock key held while migrating (``pg_advisory_lock`` takes one bigint)."""
RETRY_SQLSTATES = "40"
"""Transaction rollback (a deadlock or a serialization failure between coordinators): the operation is
refused as ``STORAGE_UNAVAILABLE`` for the client to retry, and the storage is not reported unhealthy."""
STORAGE_SQLSTATES = (
    "53",  # insufficient resources: disk full, out of memory, too many connections
    "08",  # connection exceptions
    "57P",  # operator intervention: admin shutdown, crash shutdown, cannot connect now
    "25006",  # read-only transaction (a standby, or default_transaction_read_only)
    "58",  # system errors: I/O
)
COMMAND_TIMEOUT = 30.0
"""Seconds a statement may take before the operation fails (a hung server must not hang a request forever)."""
CONNECT_TIMEOUT = 10.0


def storage_error(error: BaseException) -> str | None:
    """Why ``error`` means the storage itself is unavailable (not a bad statement or a constraint), or None."""
    if isinstance(error, asyncpg.PostgresError):
        state = str(getattr(error, "sqlstate", "") or "")
        return str(error) if state.startswith(STORAGE_SQLSTATES) else None
    if isinstance(error, (OSError, asyncpg.InterfaceError, asyncio.TimeoutError)):
        # Connection refused or reset, the pool closed under us, a statement past COMMAND_TIMEOUT.
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return None


async def _keep_session(conn: Connection) -> None:
    """What a pooled connection's release runs after asyncpg has rolled back any transaction left open: nothing.

    asyncpg's default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every
    release, one more transaction per store operation (about half of what a job cost). Pooled connections
    carry no session state to undo: ``LISTEN`` and session advisory locks live on dedicated connections
    (``coordinator.pg.dedicated``), no statement changes a setting with ``SET``, and cursors end with the
    transaction that opened them."""
    return None


class PostgresDatabase:
    def __init__(self, url: str, min_size: int = 1, max_size: int = 10, migrations: Sequence[str] = MIGRATIONS) -> None:
        self.url = url
        """For modules that need a dedicated connection of their own (LISTEN, a held advisory lock)."""
        self.min_size = min_size
        self.max_size = max_size
        self._migrations = migrations
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._problem: str | None = None
        self.errors = 0
        """Operations that failed with a storage error (not a constraint violation) since start, for metrics."""

    async def open(self) -> None:
        """Connect, migrate under the advisory lock, and open the pool. A database that cannot be used (no
        server there, refused credentials, no such database, a newer schema) is a :class:`ConfigError` naming
        it, so the coordinator stops with one line instead of starting without its store."""
        try:
            conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT)
            try:
                await self._migrate(conn)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=self.min_size,
                max_size=self.max_size,
                command_timeout=COMMAND_TIMEOUT,
                timeout=CONNECT_TIMEOUT,
                reset=_keep_session,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise ConfigError(
                f"database {without_password(self.url)} cannot be used ({reason}); check the URL, the credentials"
                " and that the server is running"
            ) from e

    async def _migrate(self, conn: Connection) -> None:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version bigint PRIMARY KEY, applied_at timestamptz"
                " NOT NULL DEFAULT now())"
            )
            current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
            if current > len(self._migrations):
                raise ConfigError(
                    f"database {without_password(self.url)} has schema version {current}, newer than this release"
                    f" knows ({len(self._migrations)}); upgrade the software or use another database"
                )
            for version, script in enumerate(self._migrations[current:], start=current + 1):
                async with conn.transaction():
                    await conn.execute(script)
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
                log.info("database migrated", engine="postgresql", version=version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise StorageUnavailable("the database is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection, no transaction (each statement commits alone)."""
        async with self._guarded():
            async with self.pool.acquire() as conn:
                yield cast(Connection, conn)  # a proxy with the connection's methods

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """One pooled connection in one transaction: committed when the block ends, rolled back if it raises."""
        async with self._guarded():
            async with self.pool.acquire() as conn, conn.transaction():
                yield cast(Connection, conn)

    @contextlib.asynccontextmanager
    async def _guarded(self) -> AsyncIterator[None]:
        try:
            yield
        except StorageUnavailable:
            self.errors += 1
            raise
        except Exception as e:
            if isinstance(e, asyncpg.PostgresError) and str(getattr(e, "sqlstate", "")).startswith(RETRY_SQLSTATES):
                self.errors += 1
                raise StorageUnavailable(f"the database refused the operation, retry it: {e}") from e
            problem = storage_error(e)
            if problem is None:
                raise
            self.errors += 1
            self._problem = problem
            log.warning("database unavailable", engine="postgresql", error=problem)
            raise StorageUnavailable(f"the database refused the operation: {problem}") from e
        self._problem = None

    async def storage_problem(self) -> str | None:
        """Why the database cannot be written now, or None; re-checked (one round trip) while there is one."""
        if self._problem is None:
            return None
        problem = self._problem
        with contextlib.suppress(StorageUnavailable):
            async with self.connection() as conn:
                if await conn.fetchval("SELECT current_setting('transaction_read_only')") == "on":
                    raise StorageUnavailable("the database is read-only")
                return None
        return self._problem or problem

    async def execute(self, statement: str, *args: Any) -> str:
        """One statement in its own transaction."""
        async with self.connection() as conn:
            return await conn.execute(statement, *args)
