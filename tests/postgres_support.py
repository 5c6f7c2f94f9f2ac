"""PostgreSQL for tests: one real cluster per test session, and a fresh database per test.

- :class:`Cluster` runs Debian's server binaries (``initdb``, ``pg_ctl``) on a free loopback port with its data
  and socket directory in a temp dir, as the ``postgres`` user when the session runs as root (the server
  refuses to run as root), and stops it (``pg_ctl stop -m immediate``) and removes the directory afterwards.
- :func:`postgres_problem` says why the tests cannot have a server here; :func:`require_postgres` skips the
  calling test then, or fails it when the environment says one must be there (``RUSTCI_REQUIRE_POSTGRES=1``, as
  ``.ci/run`` sets).
- :meth:`Cluster.create_database` makes an empty database and returns its ``postgresql://`` URL, the form the
  coordinator's ``database`` setting takes.

The cluster trusts local connections (``--auth=trust``): it listens on 127.0.0.1 only and lives for one session.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port

SERVER_USER = "postgres"
START_TIMEOUT = 60


def bin_dir() -> Path | None:
    """The newest installed server's binaries (Debian keeps them out of PATH, per major version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def postgres_problem() -> str | None:
    """Why the tests cannot start a PostgreSQL server here, or None when they can."""
    if bin_dir() is None:
        return "no PostgreSQL server binaries (Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run the server as"
    return None


def require_postgres() -> None:
    problem = postgres_problem()
    if problem is None:
        return
    if os.environ.get("RUSTCI_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required here (RUSTCI_REQUIRE_POSTGRES=1): {problem}")
    pytest.skip(problem)


class Cluster:
    """A PostgreSQL cluster of this test session (see the module docstring)."""

    def __init__(self) -> None:
        self.bin = bin_dir() or Path("/nonexistent")
        self.root = Path(tempfile.mkdtemp(prefix="rustci-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = SERVER_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self._running = False

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=START_TIMEOUT, cwd=self.root, check=False
        )

    def start(self) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        done = self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        done = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start"
        )
        if done.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace") if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}\n{log[-2000:]}")
        self._running = True

    def stop(self) -> None:
        if self._running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self._running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = self._run(
            "psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
            "-U", self.user, "-d", database, "-c", sql,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    server = Cluster()
    try:
        server.start()
        yield server
    finally:
        server.stop()
