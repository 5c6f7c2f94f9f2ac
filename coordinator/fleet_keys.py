"""Where the generated keys live: the admin API key, the registration key, the JWT secret and the key that seals
job secrets (``coordinator.sealing``). A key set in the config is used as is and never generated.

A :class:`KeySource` gives a key by name, making it on first use:

- :class:`StateDirKeys`: one coordinator on its own (SQLite) database keeps each key in a file of its state
  directory (``<state_dir>/admin-api-key``, ``registration-key``, ``jwt-secret``, ``secrets.key``; mode 0600).
- :class:`DatabaseKeys`: coordinators sharing a PostgreSQL database keep them in its ``fleet_settings`` table,
  so a second coordinator started with the same ``database`` and its own state directory accepts the same
  credentials and unseals what another sealed. Each start offers a value (the state directory's, else a new
  one) with an insert-if-absent and then reads the row: concurrent starts all end up with the one that was
  inserted first. The value is mirrored into the state directory (a differing file is kept beside it as
  ``<name>.replaced``), for the commands that run beside the coordinator (``rustci-coordinator token``, the
  ``rustci`` CLI's local admin key).
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from coordinator import pg
from shared import ids

log = structlog.get_logger(__name__)

ADMIN_API_KEY = "admin-api-key"
REGISTRATION_KEY = "registration-key"
JWT_SECRET = "jwt-secret"
SEALING_KEY = "secrets.key"

GENERATORS: dict[str, Callable[[], str]] = {
    ADMIN_API_KEY: ids.new_api_key,
    REGISTRATION_KEY: lambda: f"reg_{ids.new_api_key()[3:]}",
    JWT_SECRET: lambda: secrets.token_hex(32),
    SEALING_KEY: lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),  # Fernet.generate_key()'s form
}


class KeySource(Protocol):
    async def kept(self, name: str) -> str:
        """The key ``name`` (one of :data:`GENERATORS`), made and kept on first use."""
        ...


def read_key(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def write_key(path: Path, value: str, *, exclusive: bool = False) -> None:
    """Write ``value`` to ``path``, mode 0600: created only if absent (``exclusive``), else replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(value + "\n")
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(value + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class StateDirKeys:
    """Keys in files of the state directory (one coordinator on its own database)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def kept_now(self, name: str) -> str:
        path = self.state_dir / name
        value = read_key(path)
        if value is None:
            value = GENERATORS[name]()
            write_key(path, value, exclusive=True)
        return value

    async def kept(self, name: str) -> str:
        return self.kept_now(name)


class DatabaseKeys:
    """Keys in the shared database's ``fleet_settings``, mirrored into the state directory."""

    def __init__(self, connections: pg.Connections, state_dir: Path) -> None:
        self._connections = connections
        self.state_dir = state_dir

    async def kept(self, name: str) -> str:
        path = self.state_dir / name
        local = read_key(path)
        async with self._connections.connection() as conn:
            await conn.execute(
                "INSERT INTO fleet_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                name,
                local or GENERATORS[name](),
            )
            value: str = await conn.fetchval("SELECT value FROM fleet_settings WHERE name = $1", name)
        if local != value:
            if local is not None:
                os.replace(path, path.with_name(path.name + ".replaced"))
                log.warning(
                    "the fleet's key differs from the state directory's; the fleet's is used",
                    key=name,
                    kept_as=str(path.with_name(path.name + ".replaced")),
                )
            write_key(path, value)
        return value
