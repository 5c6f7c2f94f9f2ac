"""The coordinator's settings, read once from YAML (see ``configs/coordinator.yaml``) and the environment."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from shared.config import Settings, load_settings
from shared.http import ServerTimeouts

ENV_OVERRIDES = {
    "RUSTCI_API_KEY": "auth.api_key",
    "RUSTCI_REGISTRATION_KEY": "auth.registration_key",
    "RUSTCI_LISTEN_HOST": "listen.host",
    "RUSTCI_LISTEN_PORT": "listen.port",
    "RUSTCI_STATE_DIR": "state_dir",
    "RUSTCI_DATABASE": "database",
    "RUSTCI_LOG_LEVEL": "log.level",
    "RUSTCI_LOG_FORMAT": "log.format",
    "RUSTCI_RATE_LIMITS_ENABLED": "rate_limits.enabled",
    "RUSTCI_TLS_CERT": "tls.cert_file",
    "RUSTCI_TLS_KEY": "tls.key_file",
    "RUSTCI_TLS_CLIENT_CA": "tls.client_ca_file",
    "RUSTCI_TLS_ALLOW_PLAINTEXT": "tls.allow_plaintext",
    "RUSTCI_LOGS_MAX_BYTES_PER_JOB": "logs.max_bytes_per_job",
    "RUSTCI_LOGS_MAX_TOTAL_BYTES": "logs.max_total_bytes",
}

KeyRole = Literal["admin", "operator", "viewer", "registrar"]
"""The roles a named API key or a JWT can carry (runner tokens are the runners' own)."""
KEY_ROLES: tuple[KeyRole, ...] = ("admin", "operator", "viewer", "registrar")
JwtAlgorithm = Literal["HS256", "RS256", "ES256"]
JWT_ALGORITHMS: tuple[JwtAlgorithm, ...] = ("HS256", "RS256", "ES256")


class Listen(ServerTimeouts):
    host: str = "127.0.0.1"
    """Interface to bind; ``0.0.0.0`` to serve other hosts."""
    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port of the API (``0`` picks a free one, for tests)."""


class ApiKey(Settings):
    """A named API key. Only its hash is kept here; ``rustci-coordinator key create`` prints both."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    """Who holds it: shown in the audit trail and in per-user rate limits."""
    role: KeyRole
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    """``sha256:<hex>`` of the key."""


class Jwt(Settings):
    """How bearer JWTs are verified (``HS256`` with ``auth.jwt_secret``; ``RS256``/``ES256`` with a public key)."""

    algorithms: list[JwtAlgorithm] = Field(default_factory=lambda: list(JWT_ALGORITHMS), min_length=1)
    """Accepted signature algorithms; RS256 and ES256 also need ``public_key_file``."""
    public_key_file: Path | None = None
    """PEM public key (RSA for RS256, EC P-256 for ES256) of the issuer that signs tokens."""
    issuer: str | None = "rustci-coordinator"
    """Required ``iss``; ``null`` accepts any issuer."""
    audience: str | None = None
    """Required ``aud`` when set."""
    role_claim: str = Field(default="role", min_length=1, max_length=200)
    """Claim holding the role (a string or a list; dots reach into objects, e.g. ``realm_access.roles``)."""


class Auth(Settings):
    api_key: str | None = Field(default=None, min_length=16)
    """The admin API key. Unset: generated on first start and kept in ``<state_dir>/admin-api-key``."""
    registration_key: str | None = Field(default=None, min_length=16)
    """The key agents present to register. Unset: generated and kept in ``<state_dir>/registration-key``."""
    jwt_secret: str | None = Field(default=None, min_length=32)
    """HS256 secret that signs bearer JWTs. Unset: generated and kept in ``<state_dir>/jwt-secret``."""
    keys: list[ApiKey] = Field(default_factory=list, max_length=1000)
    """Named API keys with roles (sent as ``X-API-Key`` like the admin key)."""
    jwt: Jwt = Field(default_factory=Jwt)

    @field_validator("keys")
    @classmethod
    def _unique_names(cls, keys: list[ApiKey]) -> list[ApiKey]:
        names = [key.name for key in keys]
        if len(set(names)) != len(names):
            raise ValueError("every key needs its own name")
        return keys


class Tls(Settings):
    cert_file: Path | None = None
    """PEM certificate chain the API is served with (HTTPS, ``wss://``). Needs ``key_file``."""
    key_file: Path | None = None
    """PEM private key of ``cert_file``."""
    client_ca_file: Path | None = None
    """CA whose client certificates agents must present (mutual TLS for runner tokens and registration)."""
    allow_plaintext: bool = False
    """Serve plain HTTP on a non-loopback address (a warning is logged at every start)."""

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _pairs(self) -> Tls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file needs tls.cert_file and tls.key_file")
        return self


class Runners(Settings):
    default_heartbeat_interval: float = Field(default=10.0, gt=0, le=3600)
    """Assumed for a runner registered through the API until its agent says its own interval."""
    liveness_multiplier: float = Field(default=3.0, ge=1.0, le=100)
    """A runner is ``inactive`` once no heartbeat came for this many of its heartbeat intervals."""
    liveness_check_interval: float = Field(default=1.0, gt=0, le=60)
    """How often the coordinator looks for runners that went quiet."""
    heartbeat_flush_interval: float = Field(default=1.0, gt=0, le=10)
    """Seconds between writes of the heartbeats received meanwhile (one transaction for all runners); reads and
    the liveness check see a heartbeat at once, a crash may lose this much ``last_seen`` and samples."""
    heartbeat_max_pending: int = Field(default=5000, ge=1, le=1_000_000)
    """Heartbeats with samples that, waiting, make the next write come sooner."""


class Agents(Settings):
    request_timeout: float = Field(default=5.0, gt=0, le=300)
    """Bound on every call the coordinator makes to an agent over its channel; past it the call answers
    RUNNER_UNAVAILABLE (at once when the agent has no channel open)."""
    connect_timeout: float = Field(default=2.0, gt=0, le=60)
    """Not used: agents open their channel to the coordinator, which never connects to them. Accepted so that
    existing configuration files still load."""
    status_timeout: float = Field(default=2.0, gt=0, le=60)
    """Bound on the live status and health calls; an agent slower than this is reported from its last heartbeat."""


class MetricsHistory(Settings):
    """Retention of the load samples agents send: raw, then 5-minute rollups, then hourly ones, then gone."""

    raw_retention_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    """Raw samples older than this are folded into 5-minute rollups."""
    five_minute_retention_days: float = Field(default=7.0, gt=0, le=30)
    """5-minute rollups older than this are folded into hourly ones."""
    retention_days: float = Field(default=30.0, gt=0, le=3660)
    """Hourly rollups older than this are deleted (the API offers periods up to 30 days)."""
    compaction_interval: float = Field(default=300.0, gt=0, le=24 * 3600)
    """Seconds between compactions (the first runs at start)."""

    @model_validator(mode="after")
    def _tiers_in_order(self) -> MetricsHistory:
        if not self.raw_retention_hours / 24 <= self.five_minute_retention_days <= self.retention_days:
            raise ValueError("need raw_retention_hours/24 <= five_minute_retention_days <= retention_days")
        return self


class WebSocketSettings(Settings):
    queue_limit: int = Field(default=1000, ge=1, le=1_000_000)
    """Events waiting for one WebSocket client; a client that falls further behind is disconnected (code 1008)."""
    close_timeout: float = Field(default=5.0, gt=0, le=300)
    """How long a closing client gets to answer the close handshake before its connection is dropped."""


class LogStream(Settings):
    keepalive_interval: float = Field(default=15.0, gt=0, le=300)
    """Seconds between keep-alive comments on a followed log (``GET /runners/{id}/logs?follow=true``); a client
    that went away is noticed at the next one at the latest."""
    queue_limit: int = Field(default=10_000, ge=1, le=10_000_000)
    """Live entries waiting for one follower; a follower further behind catches up from the database instead."""


class Logs(Settings):
    """Retention of the job logs the coordinator stores (see ``docs/architecture.md``, "Log storage").

    Logs are kept in chunks of many lines; past a limit, whole chunks are deleted, oldest first. A reader
    then sees the log begin at the oldest line kept (a page starts there; a ``Last-Event-ID`` older than it
    resumes there)."""

    max_bytes_per_job: int | None = Field(default=None, ge=256 * 1024)
    """Most bytes of stored log one job keeps; past it the job's oldest chunks are deleted. ``null``: no
    limit; at least 256 KiB (two chunks: whole chunks are deleted). (The agent's ``log_limit`` bounds what a job
    may print; this bounds what the coordinator keeps.)"""
    max_total_bytes: int | None = Field(default=None, ge=256 * 1024)
    """Most bytes of stored log in total, all runners and jobs together; past it the oldest chunks of any
    job are deleted. ``null``: no limit; at least 256 KiB."""
    retention_interval: float = Field(default=5.0, gt=0, le=3600)
    """Seconds between retention passes while logs are written (a job may pass its limit by what arrives
    meanwhile); a pass also runs at start."""


class Dashboard(Settings):
    """The web dashboard at ``/`` and its browser sessions (see ``docs/dashboard.md``)."""

    session_ttl: float = Field(default=8 * 3600.0, gt=0, le=30 * 86400)
    """Seconds a dashboard sign-in lasts (never longer than the bearer token it was made from)."""
    max_sessions: int = Field(default=10_000, ge=1, le=10_000_000)
    """Sessions kept in memory at once; past it the oldest is signed out."""


class Log(Settings):
    level: str = Field(default="info", pattern=r"^(?i:debug|info|warning|warn|error)$")
    format: str = Field(default="auto", pattern=r"^(json|console|auto)$")


class RateLimits(Settings):
    enabled: bool = True
    """Apply the API's rate limits (``X-RateLimit-*`` headers, 429 ``RATE_LIMIT_EXCEEDED`` past them)."""
    registration_per_minute: int = Field(default=10, ge=1, le=1_000_000)
    """``POST /runners/register``, per client IP."""
    status_per_minute: int = Field(default=100, ge=1, le=1_000_000)
    """``GET /runners/{id}/status`` and ``/health``, per runner."""
    job_submission_per_minute: int = Field(default=50, ge=1, le=1_000_000)
    """``POST /runners/{id}/jobs``, per runner."""
    bulk_per_minute: int = Field(default=5, ge=1, le=1_000_000)
    """``POST /runners/bulk``, per user (the credential that authenticated)."""


class AuditSettings(Settings):
    retention_days: float = Field(default=365.0, gt=0, le=3660)
    """Audit entries older than this are deleted (checked at start and hourly)."""


DatabaseEngine = Literal["sqlite", "postgresql"]
POSTGRES_SCHEMES = ("postgresql", "postgres")


class DatabasePool(Settings):
    """Connections each coordinator keeps to a PostgreSQL database (SQLite has one, on its own thread)."""

    min_size: int = Field(default=1, ge=0, le=1000)
    """Opened at start and kept."""
    max_size: int = Field(default=10, ge=1, le=1000)
    """The most held at once; an operation beyond them waits for one. Several coordinators: their sum must stay
    under the server's ``max_connections``."""

    @model_validator(mode="after")
    def _ordered(self) -> DatabasePool:
        if self.min_size > self.max_size:
            raise ValueError(f"database_pool.min_size ({self.min_size}) exceeds max_size ({self.max_size})")
        return self


class CoordinatorConfig(Settings):
    listen: Listen = Field(default_factory=Listen)
    state_dir: Path = Path(".rustci/coordinator")
    """Where the database and the generated keys live."""
    database: str | None = None
    """The SQLite file (default ``<state_dir>/coordinator.db``) or a ``postgresql://user[:password]@host:port/db``
    URL, for several coordinators sharing one database."""
    database_pool: DatabasePool = Field(default_factory=DatabasePool)
    auth: Auth = Field(default_factory=Auth)
    runners: Runners = Field(default_factory=Runners)
    agents: Agents = Field(default_factory=Agents)
    metrics: MetricsHistory = Field(default_factory=MetricsHistory)
    websocket: WebSocketSettings = Field(default_factory=WebSocketSettings)
    log_stream: LogStream = Field(default_factory=LogStream)
    logs: Logs = Field(default_factory=Logs)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    dashboard: Dashboard = Field(default_factory=Dashboard)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=1024**3)
    """Largest request body accepted."""
    log: Log = Field(default_factory=Log)
    tls: Tls = Field(default_factory=Tls)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    trusted_proxies: list[str] = Field(default_factory=list, max_length=1000)
    """Addresses or networks (``10.0.0.0/8``) of reverse proxies whose ``X-Forwarded-For`` is believed."""

    @field_validator("database")
    @classmethod
    def _database(cls, database: str | None) -> str | None:
        if database is None or "://" not in database:
            return database or None
        parts = urlsplit(database)
        if parts.scheme not in POSTGRES_SCHEMES:
            raise ValueError(f"database: a file path or a postgresql:// URL, not a {parts.scheme}:// URL")
        if not parts.hostname or not parts.path.strip("/"):
            raise ValueError("database: a postgresql:// URL names a host and a database (postgresql://host:5432/db)")
        return database

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as e:
                raise ValueError(f"not an address or network: {proxy!r}") from e
        return proxies

    @model_validator(mode="after")
    def _no_plaintext_off_loopback(self) -> CoordinatorConfig:
        if not self.tls.enabled and not self.tls.allow_plaintext and not is_loopback(self.listen.host):
            raise ValueError(
                f"listen.host {self.listen.host!r} is not a loopback address: serve it with TLS "
                "(tls.cert_file and tls.key_file) or set tls.allow_plaintext: true"
            )
        return self

    @property
    def plaintext_off_loopback(self) -> bool:
        return not self.tls.enabled and not is_loopback(self.listen.host)

    @property
    def database_engine(self) -> DatabaseEngine:
        return "postgresql" if self.database and "://" in self.database else "sqlite"

    @property
    def database_path(self) -> Path:
        """The SQLite file (for the ``sqlite`` engine)."""
        if self.database_engine != "sqlite":
            raise ValueError("the database is not an SQLite file")
        return Path(self.database) if self.database else self.state_dir / "coordinator.db"

    @property
    def database_url(self) -> str:
        """The PostgreSQL URL (for the ``postgresql`` engine)."""
        if self.database_engine != "postgresql" or self.database is None:
            raise ValueError("the database is not a PostgreSQL URL")
        return self.database

    @property
    def database_name(self) -> str:
        """The database for logs and health reports: the file, or the URL without its password."""
        return str(self.database_path) if self.database_engine == "sqlite" else without_password(self.database_url)


def without_password(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``: for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load(path: Path | None) -> CoordinatorConfig:
    return load_settings(CoordinatorConfig, path, ENV_OVERRIDES)
