"""An embedded SQLite database driven from asyncio without blocking the event loop.

One connection lives on one dedicated thread. Each store operation is a plain function that runs there as a
single transaction, so atomicity follows from the function boundary. Operations are not handed to the thread one
by one: those asked for in one turn of the event loop (and those asked for while a hand-off is in flight) go to
the thread together, in one hop, and run there in the order they were asked for; the writes share one
transaction (one commit), each inside its own savepoint, so each still succeeds or fails alone with its own
result or error. The hop (a thread wake-up and a loop wake-up, each taking the GIL) and the commit are what an
operation used to cost, far more than its statements; now they are paid once per turn, however many jobs and
events the turn touched (aiosqlite would pay a hop per statement). Whoever awaits an operation resumes only
after its transaction committed, so "stored before acknowledged" holds as before.

WAL with ``synchronous=NORMAL``: a committed transaction survives the process being killed (SIGKILL); a power
loss may take the last few commits. That is the documented trade-off for an embedded CI store.

When the storage refuses writes (disk full, a read-only file system, I/O errors) an operation raises
:class:`~shared.errors.StorageUnavailable` (503 ``STORAGE_UNAVAILABLE``), its transaction rolled back, so
nothing half-done is kept and the client knows to retry. The database remembers the problem until a write
succeeds again, or until :meth:`Database.storage_problem` finds space again, so health reports turn back by
themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from shared.errors import StorageUnavailable
from shared.statefiles import DamagedState

T = TypeVar("T")
DAMAGED_ADVICE = (
    "restore it from a backup, or move it aside (with its -wal and -shm files) to start with an empty one;"
    " what it held is then lost"
)
log = structlog.get_logger(__name__)


STORAGE_ERRORS = ("disk is full", "readonly", "disk i/o error", "read-only", "unable to open database file")
"""How SQLite words a refusal of the storage itself (its result codes are not exposed before Python 3.11.4)."""
PROBE_BYTES = 64 * 1024


def _storage_error(e: sqlite3.Error) -> str | None:
    text = str(e).lower()
    return str(e) if any(marker in text for marker in STORAGE_ERRORS) else None


def _damage(path: Path, e: sqlite3.DatabaseError) -> DamagedState:
    text = str(e)
    if "locked" in text:
        return DamagedState(path, "is in use by another process", "stop the other daemon using this state directory")
    if isinstance(e, sqlite3.OperationalError):
        return DamagedState(
            path, f"cannot be opened ({text})", "check the owner, permissions and free space of its directory"
        )
    return DamagedState(path, f"is damaged ({text})", DAMAGED_ADVICE)


def _outcome(runner: Callable[[Any], Any], argument: Any) -> tuple[bool, Any]:
    try:
        return True, runner(argument)
    except Exception as e:  # handed back to the caller that asked for this operation
        return False, e


Migration = str | Callable[[sqlite3.Connection], None]
"""One schema step: SQL statements separated by ``;`` + newline, or a function run in the migration's
transaction (for a step that must move data through Python code)."""


class Database:
    def __init__(self, path: Path, migrations: Sequence[Migration]) -> None:
        self.path = path
        self._migrations = migrations
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite:{path.name}")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self.errors = 0
        """Operations that failed with a storage error (not a constraint violation) since start, for metrics."""
        self._problem: str | None = None
        self._queue: list[tuple[Callable[[Any], Any], Any, asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._in_flight = False
        self.handoffs = 0
        """Hops to the database thread since start (each carries every operation queued by then), for benchmarks."""

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
                if callable(script):
                    script(conn)
                else:
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
        result: T = await self._submit(self._transact, operation)
        return result

    async def read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only ``operation`` (no transaction needed: WAL readers see a consistent snapshot)."""
        result: T = await self._submit(self._call, operation)
        return result

    # --- one hop per loop turn ---------------------------------------------------------------------------------

    def _submit(self, runner: Callable[[Any], Any], argument: Any) -> asyncio.Future[Any]:
        """Queue ``runner(argument)`` for the database thread; it goes with the next hand-off, in queue order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((runner, argument, future))
        if not self._flush_scheduled and not self._in_flight:
            self._flush_scheduled = True
            loop.call_soon(self._flush, loop)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_scheduled = False
        if self._in_flight or not self._queue:
            return  # what is queued goes when the hand-off in flight is back
        items, self._queue = self._queue, []
        self._in_flight = True
        self.handoffs += 1
        work = [(runner, argument) for runner, argument, _ in items]
        done = loop.run_in_executor(self._executor, self._run_all, work)
        done.add_done_callback(lambda finished: self._settle(loop, items, finished))

    def _run_all(self, work: list[tuple[Callable[[Any], Any], Any]]) -> list[tuple[bool, Any]]:
        """On the database thread: each queued call in order, its result or its error kept apart. Two or more
        writes share one transaction, each inside its own savepoint (see :meth:`_run_together`)."""
        writes = sum(1 for runner, _ in work if runner == self._transact)
        if writes < 2 or self._conn is None or self._problem is not None:
            return [_outcome(runner, argument) for runner, argument in work]
        return self._run_together(self._conn, work)

    def _run_together(
        self, conn: sqlite3.Connection, work: list[tuple[Callable[[Any], Any], Any]]
    ) -> list[tuple[bool, Any]]:
        """One ``BEGIN IMMEDIATE … COMMIT`` for the whole hand-off: one commit (one WAL append) instead of one per
        write. A write that raises is rolled back to its savepoint and fails alone, as in its own transaction;
        if the storage refuses the transaction itself (it is gone, or will not commit), every write of the
        hand-off fails with that refusal and nothing of it is kept, so no caller is told "stored" for less."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for runner, argument in work:
                if runner != self._transact:
                    outcomes.append(_outcome(runner, argument))  # a read sees the writes asked for before it
                    continue
                conn.execute("SAVEPOINT operation")
                try:
                    value = argument(conn)
                except Exception as e:
                    if not conn.in_transaction:
                        raise  # SQLite rolled the whole transaction back (disk full): the hand-off fails
                    conn.execute("ROLLBACK TO operation")
                    conn.execute("RELEASE operation")
                    if isinstance(e, sqlite3.Error) and not isinstance(e, sqlite3.IntegrityError):
                        self.errors += 1
                        e = self._refused(e)
                    outcomes.append((False, e))
                    continue
                conn.execute("RELEASE operation")
                outcomes.append((True, value))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            self.errors += 1
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            refused = self._refused(e)
            ran = outcomes + [(False, refused)] * (len(work) - len(outcomes))
            return [(False, refused) if runner == self._transact else ran[i] for i, (runner, _) in enumerate(work)]
        self._problem = None
        return outcomes

    def _settle(
        self,
        loop: asyncio.AbstractEventLoop,
        items: list[tuple[Callable[[Any], Any], Any, asyncio.Future[Any]]],
        finished: asyncio.Future[list[tuple[bool, Any]]],
    ) -> None:
        self._in_flight = False
        error = None if finished.cancelled() else finished.exception()
        if finished.cancelled() or error is not None:  # the executor itself failed (shut down): fail them all
            outcomes: list[tuple[bool, Any]] = [(False, error or RuntimeError("database hand-off cancelled"))] * len(
                items
            )
        else:
            outcomes = finished.result()
        for (_, _, future), (ok, value) in zip(items, outcomes, strict=True):
            if future.done():
                continue  # the caller gave up waiting; the operation ran all the same
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        if self._queue:
            self._flush(loop)

    def _call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise RuntimeError(f"database {self.path} is not open")
        try:
            return operation(self._conn)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as e:
            self.errors += 1  # only ever on the database thread
            raise self._refused(e) from e

    def _transact(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"database {self.path} is not open")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = operation(conn)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already (disk full)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as e:
            self.errors += 1  # only ever on the database thread
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise self._refused(e) from e
        self._problem = None
        return result

    def _refused(self, e: sqlite3.Error) -> Exception:
        """A storage refusal becomes :class:`StorageUnavailable` (and is remembered); anything else is re-raised."""
        problem = _storage_error(e)
        if problem is None:
            return e
        if self._problem is None:
            log.error("storage refuses writes", database=str(self.path), error=problem)
        self._problem = problem
        return StorageUnavailable(
            "The server's storage is unavailable (disk full or read-only); retry later", reason=problem
        )

    async def storage_problem(self) -> str | None:
        """The storage problem the last write met, or None. While there is one, each call checks whether a
        write of :data:`PROBE_BYTES` fits in the database's directory again, and clears it if so."""
        if self._problem is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._probe)
        return self._problem

    def _probe(self) -> None:
        probe = self.path.with_name(f".{self.path.name}.probe")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"\0" * PROBE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        if self._problem is not None:
            log.info("storage accepts writes again", database=str(self.path))
        self._problem = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def _close(_: object) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._submit(_close, None)  # after every operation queued before it
        self._executor.shutdown(wait=True)


def has_tags(column: str, wanted: Sequence[str]) -> tuple[str, list[Any]]:
    """The condition that the JSON array in ``column`` holds every one of ``wanted`` (distinct values), with its
    parameters (SQLite's ``json_each``)."""
    marks = ", ".join("?" for _ in wanted)
    condition = f"(SELECT COUNT(DISTINCT value) FROM json_each({column}) WHERE value IN ({marks})) = ?"
    return condition, [*wanted, len(wanted)]
