"""The coordinator's settings, read once from YAML (see ``configs/coordinator.yaml``) and the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.config import Settings, load_settings

ENV_OVERRIDES = {
    "RUSTCI_API_KEY": "auth.api_key",
    "RUSTCI_REGISTRATION_KEY": "auth.registration_key",
    "RUSTCI_LISTEN_HOST": "listen.host",
    "RUSTCI_LISTEN_PORT": "listen.port",
    "RUSTCI_STATE_DIR": "state_dir",
    "RUSTCI_DATABASE": "database",
    "RUSTCI_LOG_LEVEL": "log.level",
    "RUSTCI_LOG_FORMAT": "log.format",
}


class Listen(Settings):
    host: str = "127.0.0.1"
    """Interface to bind; ``0.0.0.0`` to serve other hosts."""
    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port of the API (``0`` picks a free one, for tests)."""


class Auth(Settings):
    api_key: str | None = Field(default=None, min_length=16)
    """The admin API key. Unset: generated on first start and kept in ``<state_dir>/admin-api-key``."""
    registration_key: str | None = Field(default=None, min_length=16)
    """The key agents present to register. Unset: generated and kept in ``<state_dir>/registration-key``."""


class Runners(Settings):
    default_heartbeat_interval: float = Field(default=10.0, gt=0, le=3600)
    """Assumed for a runner registered through the API until its agent says its own interval."""
    liveness_multiplier: float = Field(default=3.0, ge=1.0, le=100)
    """A runner is ``inactive`` once no heartbeat came for this many of its heartbeat intervals."""
    liveness_check_interval: float = Field(default=1.0, gt=0, le=60)
    """How often the coordinator looks for runners that went quiet."""


class Agents(Settings):
    request_timeout: float = Field(default=5.0, gt=0, le=300)
    """Bound on every call the coordinator makes to an agent; past it the call answers RUNNER_UNAVAILABLE."""
    connect_timeout: float = Field(default=2.0, gt=0, le=60)
    """Bound on opening a connection to an agent (within ``request_timeout``)."""
    delivery_retry_interval: float = Field(default=5.0, gt=0, le=3600)
    """How long held jobs wait before the coordinator tries an unreachable agent again (a heartbeat retries sooner)."""


class Log(Settings):
    level: str = Field(default="info", pattern=r"^(?i:debug|info|warning|warn|error)$")
    format: str = Field(default="auto", pattern=r"^(json|console|auto)$")


class CoordinatorConfig(Settings):
    listen: Listen = Field(default_factory=Listen)
    state_dir: Path = Path(".rustci/coordinator")
    """Where the database and the generated keys live."""
    database: Path | None = None
    """The SQLite file; default ``<state_dir>/coordinator.db``."""
    auth: Auth = Field(default_factory=Auth)
    runners: Runners = Field(default_factory=Runners)
    agents: Agents = Field(default_factory=Agents)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=1024**3)
    """Largest request body accepted."""
    log: Log = Field(default_factory=Log)

    @property
    def database_path(self) -> Path:
        return self.database or self.state_dir / "coordinator.db"


def load(path: Path | None) -> CoordinatorConfig:
    return load_settings(CoordinatorConfig, path, ENV_OVERRIDES)
