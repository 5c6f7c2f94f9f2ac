"""``rustci-coordinator migrate-store --to postgresql://...``: copy a coordinator's SQLite store into PostgreSQL.

Run it with the coordinator stopped, with the coordinator's own config (``-c FILE``, ``RUSTCI_STATE_DIR``), so it
finds the same SQLite file and state directory. It

1. opens the SQLite database as the coordinator would (bringing an older file up to this release's schema first),
   and the target database, applying the PostgreSQL migrations (``coordinator.store.postgres.schema``);
2. refuses a target that already holds runners or jobs: it copies into an empty database, never merges;
3. copies every table the two schemas share, in the order the PostgreSQL schema creates them (so every row's
   foreign keys already exist), column by column by name, all in one transaction: the target ends up with all of
   it or none of it;
4. moves each identity sequence past the copied ids, so new rows do not collide with old ones;
5. stores the state directory's generated keys (admin key, registration key, JWT secret, the key that seals job
   secrets) in ``fleet_settings``, so the agents, scripts and sealed secrets of the old coordinator keep working
   with every coordinator on the new database.

The two schemas use the same table and column names by design; what only one engine has (SQLite's
``sqlite_*`` tables, PostgreSQL's ``schema_version`` and the tables several coordinators share at run time) is
not copied.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.config import CoordinatorConfig
from coordinator.store.schema import MIGRATIONS as SQLITE_MIGRATIONS
from shared.sqlite import Database

if TYPE_CHECKING:
    from coordinator.store.postgres.database import PostgresDatabase

BATCH = 5_000
"""Rows read from SQLite and handed to PostgreSQL's ``COPY`` at a time."""
RUN_TIME_TABLES = frozenset(
    {"schema_version", "fleet_settings", "rate_limit_counters", "coordinator_channels", "fleet_messages"}
)
"""PostgreSQL tables that hold what coordinators share while running, not what a store holds."""
KEY_FILES = ("admin-api-key", "registration-key", "jwt-secret", "secrets.key")
"""The generated keys a coordinator keeps in its state directory, under the names ``fleet_settings`` uses."""


class MigrationRefused(Exception):
    """The copy cannot be made as asked; ``str()`` is the one line to print."""


@dataclass
class Copied:
    rows: dict[str, int] = field(default_factory=dict)
    """Rows copied per table, in copy order."""
    keys: list[str] = field(default_factory=list)
    """Generated keys stored in ``fleet_settings``."""


def _coerce(kind: str, value: Any) -> Any:
    """A SQLite value as the PostgreSQL column's type wants it (SQLite's typing is per value, not per column)."""
    if value is None:
        return None
    if kind in ("bigint", "integer", "smallint"):
        return int(value)
    if kind in ("double precision", "real", "numeric"):
        return float(value)
    if kind == "bytea":
        return value if isinstance(value, bytes) else str(value).encode()
    if kind == "boolean":
        return bool(value)
    return value if isinstance(value, str) else str(value)


def _sqlite_rows(conn: sqlite3.Connection, table: str, columns: Sequence[str]) -> Iterator[list[tuple[Any, ...]]]:
    names = ", ".join(f'"{c}"' for c in columns)
    cursor = conn.execute(f'SELECT {names} FROM "{table}"')  # names come from both schemas' catalogues
    while rows := cursor.fetchmany(BATCH):
        yield [tuple(r) for r in rows]


async def migrate(config: CoordinatorConfig, target_url: str) -> Copied:
    import asyncpg

    from coordinator.store.postgres.database import PostgresDatabase

    source_path = config.database_path
    if not source_path.is_file():
        raise MigrationRefused(f"no SQLite store at {source_path}: give the coordinator's own -c FILE and state dir")
    upgrade = Database(source_path, SQLITE_MIGRATIONS)
    await upgrade.open()  # the coordinator's own upgrade path; refuses a file another process holds
    await upgrade.close()
    target = PostgresDatabase(target_url, min_size=1, max_size=1)
    try:
        await target.open()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise MigrationRefused(f"cannot open {_safe(target_url)}: {e}") from e
    # Read with a plain read-only connection, table by table in batches: a one-shot command, nothing else
    # shares this loop, and memory stays bounded by BATCH whatever the store holds.
    source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True, isolation_level=None)
    try:
        source.execute("BEGIN")  # one snapshot for every table, even if a coordinator still wrote meanwhile
        return await _copy(source, target, config.state_dir)
    finally:
        source.close()
        await target.close()


def _sqlite_columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
    tables = [
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    ]
    return {t: [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')] for t in tables}


async def _copy(source: sqlite3.Connection, target: PostgresDatabase, state_dir: Path) -> Copied:
    copied = Copied()
    present = _sqlite_columns(source)
    async with target.transaction() as conn:
        held = await conn.fetchval("SELECT (SELECT count(*) FROM runners) + (SELECT count(*) FROM fleet_jobs)")
        if held:
            raise MigrationRefused("the target database already holds runners or jobs; migrate into an empty one")
        tables = await conn.fetch(
            "SELECT c.relname AS name FROM pg_class c WHERE c.relkind = 'r'"
            " AND c.relnamespace = 'public'::regnamespace ORDER BY c.oid"
        )
        for table in (r["name"] for r in tables):
            if table in RUN_TIME_TABLES or table not in present:
                continue
            kinds = {
                r["column_name"]: r["data_type"]
                for r in await conn.fetch(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = $1",
                    table,
                )
            }
            columns = [c for c in present[table] if c in kinds]
            count = 0
            for batch in _sqlite_rows(source, table, columns):
                records = [tuple(_coerce(kinds[col], v) for col, v in zip(columns, row, strict=True)) for row in batch]
                await conn.copy_records_to_table(table, records=records, columns=columns)
                count += len(records)
            copied.rows[table] = count
            for identity in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public'"
                " AND table_name = $1 AND is_identity = 'YES'",
                table,
            ):
                column = identity["column_name"]
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                    f' COALESCE((SELECT MAX("{column}") FROM "{table}"), 0) + 1, false)'
                )
        for name in KEY_FILES:
            path = state_dir / name
            if path.is_file() and (value := path.read_text(encoding="utf-8").strip()):
                await conn.execute(
                    "INSERT INTO fleet_settings (name, value) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    name,
                    value,
                )
                copied.keys.append(name)
    return copied


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}@{host}"


__all__ = ["Copied", "MigrationRefused", "migrate"]
