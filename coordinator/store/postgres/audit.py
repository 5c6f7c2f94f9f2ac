"""The audit trail's storage on PostgreSQL: the ``audit`` table, with the same columns as the SQLite one.

``coordinator.audit.AuditLog`` queues entries and writes them in batches; this is where a batch goes (one
``INSERT … SELECT FROM unnest(…)``, so a batch costs one round trip), and what ``GET /api/audit`` reads (newest
first by ``id``, which the identity column hands out in insertion order on every coordinator sharing the
database). Each coordinator remembers the principals it saw use a credential; two coordinators meeting a new
principal at the same moment may both record its first use (the trail then shows it twice, never not at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coordinator.audit import FIRST_USE, Record, audit_entry
from coordinator.store.postgres.database import PostgresDatabase
from coordinator.store.postgres.sql import affected
from shared.models import AuditEntry

_COLUMNS = "ts, principal, role, client, action, method, path, runner_id, job_id, status, outcome, detail"
_TYPES = ("double precision", "text", "text", "text", "text", "text", "text", "text", "text", "bigint", "text", "text")
_ARRAYS = ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_TYPES, start=1))
_INSERT = (
    f"INSERT INTO audit ({_COLUMNS}) SELECT {_COLUMNS} FROM unnest({_ARRAYS}) WITH ORDINALITY AS e({_COLUMNS}, n)"
    " ORDER BY n"
)
"""A batch in one statement, in the order it was recorded (``id`` follows it)."""


class PostgresAuditStorage:
    """The ``audit`` table of a :class:`~coordinator.store.postgres.database.PostgresDatabase`."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    async def first_used(self) -> set[str]:
        async with self._db.connection() as conn:
            rows = await conn.fetch("SELECT DISTINCT principal FROM audit WHERE action = $1", FIRST_USE)
        return {str(row[0]) for row in rows}

    async def append(self, records: Sequence[Record]) -> None:
        if not records:
            return
        columns = [list(column) for column in zip(*(r.row() for r in records), strict=True)]
        async with self._db.transaction() as conn:
            await conn.execute(_INSERT, *columns)

    async def prune(self, before: float) -> int:
        async with self._db.transaction() as conn:
            return affected(await conn.execute("DELETE FROM audit WHERE ts < $1", before))

    async def query(
        self, since: float | None, until: float | None, principal: str | None, limit: int, offset: int
    ) -> tuple[list[AuditEntry], int]:
        where: list[str] = []
        args: list[Any] = []
        for condition, value in (("ts >= ", since), ("ts <= ", until), ("principal = ", principal)):
            if value is not None:
                args.append(value)
                where.append(f"{condition}${len(args)}")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        page = f"LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}"
        async with self._db.connection() as conn:
            total = await conn.fetchval(f"SELECT COUNT(*) FROM audit {clause}", *args)
            rows = await conn.fetch(f"SELECT * FROM audit {clause} ORDER BY id DESC {page}", *args, limit, offset)
        return [audit_entry(row) for row in rows], int(total)
