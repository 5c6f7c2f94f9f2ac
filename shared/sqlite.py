"""An embedded SQLite database driven from asyncio without blocking the event loop.

One connection lives on one dedicated thread. Each store operation is a plain function that runs there as a
single transaction, so an operation costs one hop between the loop and the thread however many statements it
runs (aiosqlite would pay a hop per statement), and atomicity follows from the function boundary.

WAL with ``synchronous=NORMAL``: a committed transaction survives the process being killed (SIGKILL); a power
loss may take the last few commits. That is the documented trade-off for an embedded CI store.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import structlog

from shared.statefiles import DamagedState

T = TypeVar("T")
DAMAGED_ADVICE = (
    "restore it from a backup, or move it aside (with its -wal and -shm files) to start with an empty one;"
    " what it held is then lost"
)
log = structlog.get_logger(__name__)


def _damage(path: Path, e: sqlite3.DatabaseError) -> DamagedState:
    text = str(e)
    if "locked" in text:
        return DamagedState(path, "is in use by another process", "stop the other daemon using this state directory")
    if isinstance(e, sqlite3.OperationalError):
        return DamagedState(
            path, f"cannot be opened ({text})", "check the owner, permissions and free space of its directory"
        )
    return DamagedState(path, f"is damaged ({text})", DAMAGED_ADVICE)


class Database:
    def __init__(self, path: Path, migrations: Sequence[str]) -> None:
        self.path = path
        self._migrations = migrations
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite:{path.name}")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open_sync)

    def _open_sync(self) -> None:
        if self.path.is_dir():
            raise DamagedState(self.path, "is a directory, not a database", DAMAGED_ADVICE)
        try:
            self._open_checked()
        except sqlite3.DatabaseError as e:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise _damage(self.path, e) from None

    def _open_checked(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        self._conn = conn
        self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if current > len(self._migrations):
            raise RuntimeError(
                f"database {self.path} has schema version {current}, newer than this release knows "
                f"({len(self._migrations)}); upgrade the software or use another state directory"
            )
        for version, script in enumerate(self._migrations[current:], start=current + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("database migrated", database=str(self.path), version=version)

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` as one transaction on the database thread and return its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._transact, operation)

    async def read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only ``operation`` (no transaction needed: WAL readers see a consistent snapshot)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, operation)

    def _call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise RuntimeError(f"database {self.path} is not open")
        return operation(self._conn)

    def _transact(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"database {self.path} is not open")
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = operation(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)
