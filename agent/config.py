"""The agent's settings, read once from YAML (see ``configs/agent.yaml``) and the environment."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from agent import executors
from shared.config import Settings, load_settings
from shared.http import ServerTimeouts
from shared.models import MIN_MASKED_LENGTH, DockerConfig, EnvName, Label, ResourceLimits

ENV_OVERRIDES = {
    "RUSTCI_COORDINATOR_URL": "coordinator.url",
    "RUSTCI_COORDINATOR_URLS": "coordinator.urls",
    "RUSTCI_REGISTRATION_KEY": "coordinator.registration_key",
    "RUSTCI_CA_FILE": "coordinator.ca_file",
    "RUSTCI_CLIENT_CERT": "coordinator.client_cert_file",
    "RUSTCI_CLIENT_KEY": "coordinator.client_key_file",
    "RUSTCI_RUNNER_NAME": "runner.name",
    "RUSTCI_AGENT_HOST": "listen.host",
    "RUSTCI_AGENT_PORT": "listen.port",
    "RUSTCI_ADVERTISE_HOST": "listen.advertise_host",
    "RUSTCI_STATE_DIR": "state_dir",
    "RUSTCI_MAX_CONCURRENT_JOBS": "max_concurrent_jobs",
    "RUSTCI_HEARTBEAT_INTERVAL": "heartbeat_interval",
    "RUSTCI_METRICS_INTERVAL": "metrics_interval",
    "RUSTCI_LOG_LEVEL": "log.level",
    "RUSTCI_LOG_FORMAT": "log.format",
}


CoordinatorUrl = Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")]


class CoordinatorLink(Settings):
    url: CoordinatorUrl = "http://127.0.0.1:8080"
    """Base URL of the coordinator (without ``/api``)."""
    urls: list[CoordinatorUrl] = Field(default_factory=list, max_length=64)
    """Several coordinators serving one fleet (on one PostgreSQL database), tried in order: the agent registers and
    opens its channel at the first that answers and moves to the next when that one refuses connections, times
    out or answers 5xx. Set, it replaces ``url``; in the environment, comma-separated."""
    registration_key: str | None = Field(default=None, min_length=16)
    """Key presented to register the first time (the coordinator prints it; the admin API key also works)."""
    request_timeout: float = Field(default=10.0, gt=0, le=300)
    """Bound on each call to the coordinator."""
    ca_file: Path | None = None
    """PEM CA that signed the coordinator's certificate (``https://`` URLs); unset: the system's trust store."""
    insecure_skip_tls_verify: bool = False
    """Accept any certificate from the coordinator. Only for a test bench: anyone on the path can read the tokens."""
    client_cert_file: Path | None = None
    """PEM client certificate for a coordinator that requires mutual TLS (``tls.client_ca_file`` there)."""
    client_key_file: Path | None = None
    """PEM private key of ``client_cert_file``."""

    @field_validator("urls", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):  # RUSTCI_COORDINATOR_URLS
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def all_urls(self) -> list[str]:
        """The coordinators to try, in order: ``urls`` when set, else ``url``."""
        return list(dict.fromkeys(self.urls)) or [self.url]

    @model_validator(mode="after")
    def _client_pair(self) -> CoordinatorLink:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("coordinator.client_cert_file and coordinator.client_key_file go together")
        return self


class RunnerSettings(Settings):
    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    """Runner name shown in the registry; defaults to the host name."""
    type: str = "native"
    """Executor this runner uses: ``local``, ``native``, ``docker``, ``kubernetes`` (see ``agent.executors``)."""
    capabilities: list[Label] = Field(default_factory=list)
    tags: list[Label] = Field(default_factory=list)
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Extra metadata; the agent adds os, arch, hostname and versions itself."""

    @field_validator("type")
    @classmethod
    def _known_executor(cls, value: str) -> str:
        if value not in executors.names():
            raise ValueError(f"unknown executor '{value}' (allowed: {', '.join(executors.names())})")
        return value


class Listen(ServerTimeouts):
    host: str = "127.0.0.1"
    """Interface the agent's local HTTP API (``/health``, ``/metrics``) binds to."""
    port: int = Field(default=8081, ge=0, le=65535)
    advertise_host: str | None = None
    """Host shown in the runner's record, information only (the coordinator never connects to agents); default
    ``host`` (or this machine's name when ``host`` is 0.0.0.0)."""


class Log(Settings):
    level: str = Field(default="info", pattern=r"^(?i:debug|info|warning|warn|error)$")
    format: str = Field(default="auto", pattern=r"^(json|console|auto)$")


class HealthThresholds(Settings):
    """Free space below which the runner's health check warns or fails (``GET /runners/{id}/health``)."""

    disk_warn_gb: float = Field(default=5.0, ge=0)
    """Free disk (on the workspaces' filesystem) below which ``disk_space`` warns."""
    disk_fail_gb: float = Field(default=1.0, ge=0)
    """Free disk below which ``disk_space`` fails."""
    memory_warn_gb: float = Field(default=0.5, ge=0)
    """Available memory below which ``memory`` warns."""
    memory_fail_gb: float = Field(default=0.1, ge=0)
    """Available memory below which ``memory`` fails."""

    @model_validator(mode="after")
    def _fail_below_warn(self) -> HealthThresholds:
        if self.disk_fail_gb > self.disk_warn_gb:
            raise ValueError("disk_fail_gb must not be above disk_warn_gb")
        if self.memory_fail_gb > self.memory_warn_gb:
            raise ValueError("memory_fail_gb must not be above memory_warn_gb")
        return self


class DockerSettings(Settings):
    """The Docker executor's job containers (``runner.type: docker``); ``docker_config`` and ``resource_limits``
    apply to them too. The engine is the one ``DOCKER_HOST`` names (default ``unix:///var/run/docker.sock``)."""

    image: str = Field(default="alpine:3.20", min_length=1, max_length=512, pattern=r"^[^\s]+$")
    """Image every job's container runs; it needs ``sh`` (and ``mkdir``, ``kill``)."""
    pull_policy: Literal["if-not-present", "never"] = "if-not-present"
    """``if-not-present``: pull the image when this host lacks it; ``never``: a missing image fails the job."""


class NativeSettings(Settings):
    """The native executor (``runner.type: native``): host processes with ``resource_limits`` enforced.

    Memory and CPU go through a cgroup per job when the agent can make one (cgroup v2: the agent's own delegated
    subtree, as systemd gives a unit with ``Delegate=yes``, or a writable cgroup root; else cgroup v1's memory and
    cpu hierarchies when writable), otherwise through ``setrlimit`` (address space, CPU seconds)."""

    limits: Literal["auto", "cgroup", "rlimit", "off"] = "auto"
    """``auto``: a cgroup when possible, else setrlimit; ``cgroup``: a cgroup or the job fails; ``rlimit``: always
    setrlimit; ``off``: no enforcement."""
    cgroup_parent: Path | None = None
    """A cgroup v2 directory the agent may create job groups in (default: found as described above)."""
    run_as: str | None = Field(default=None, min_length=1, max_length=64)
    """User (name or uid) the steps run as; the agent must be root to switch to it."""


class Toleration(Settings):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class KubernetesSettings(Settings):
    """The Kubernetes executor (``runner.type: kubernetes``): one pod per job attempt.

    The cluster is the one ``kubeconfig`` names (default ``$KUBECONFIG``, then ``~/.kube/config``), or the pod's
    own service account with ``in_cluster``. ``resource_limits`` become the job container's requests and limits."""

    kubeconfig: Path | None = None
    """Kubeconfig file; default ``$KUBECONFIG``, then ``~/.kube/config``."""
    context: str | None = None
    """Context of the kubeconfig to use; default its current context."""
    in_cluster: bool = False
    """Use the service account of the pod the agent runs in instead of a kubeconfig."""
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    service_account: str | None = Field(default=None, min_length=1, max_length=253)
    """Service account the job pods run as; default the namespace's ``default``."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    image: str = Field(default="alpine:3.20", min_length=1, max_length=512, pattern=r"^[^\s]+$")
    """Image of the job pods when the job names none; it needs ``sh``."""
    pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    host_workspace: bool = False
    """Mount the agent's workspace directory into the pod (hostPath) instead of an ``emptyDir``: for an agent that
    runs on the node its pods run on, so that ``cleanup_policy`` keeps the files on the host."""
    volumes: list[str] = Field(default_factory=list)
    """``host_path:container_path[:ro]`` hostPath mounts for every job pod."""
    api_timeout: float = Field(default=30.0, gt=0, le=600)
    """Bound on each call to the API server (watches and log streams excepted)."""


class AgentConfig(Settings):
    coordinator: CoordinatorLink = Field(default_factory=CoordinatorLink)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    listen: Listen = Field(default_factory=Listen)
    state_dir: Path = Path(".rustci/agent")
    """Identity, job queue and unshipped events live here; keep it across restarts."""
    workspace_root: Path | None = None
    """Where per-job workspaces are made; default ``<state_dir>/workspaces``."""
    heartbeat_interval: float = Field(default=10.0, gt=0, le=3600)
    """Seconds between heartbeats; the coordinator marks the runner inactive after three missed."""
    metrics_interval: float = Field(default=10.0, gt=0, le=300)
    """Seconds between load samples (cpu, memory, disk, active jobs) shipped with the heartbeats for the
    coordinator's metrics history. At most 300: uptime is counted in 5-minute slots."""
    metrics_buffer: int = Field(default=8640, ge=1, le=1_000_000)
    """Samples kept while the coordinator cannot be reached (8640 = a day at 10 s); past it the oldest go."""
    health: HealthThresholds = Field(default_factory=HealthThresholds)
    max_concurrent_jobs: int = Field(default=4, ge=1, le=1000)
    job_timeout: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    """Default bound on a job's run time, in seconds, when the job does not set ``timeout``."""
    kill_grace_period: float = Field(default=10.0, ge=0, le=3600)
    """Seconds between SIGTERM and SIGKILL when a step is ended (timeout, cancel, shutdown)."""
    cleanup_policy: Literal["always", "on_success", "never"] = "always"
    """When to remove a job's workspace."""
    shutdown_timeout: float = Field(default=30.0, ge=0, le=24 * 3600)
    """On SIGTERM, how long running jobs may finish before they are cancelled."""
    environment: dict[str, str] = Field(default_factory=dict)
    """Variables every job sees (a job's own ``environment`` wins)."""
    secrets: dict[EnvName, Annotated[str, Field(min_length=MIN_MASKED_LENGTH)]] = Field(default_factory=dict)
    """Runner-level secrets: every job sees them like ``environment``, and its logs show them as ``[MASKED]``
    (their base64 and URL-encoded forms too)."""
    max_log_line_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    """A longer output line is logged in pieces of this size, each but the last marked `` [continued]``."""
    job_log_limit_bytes: int = Field(default=100 * 1024 * 1024, ge=64 * 1024, le=1024**4)
    """Output one attempt of a job may log. Past it the head and the tail are kept, with one entry saying how much
    was dropped between them; a job with ``on_log_limit: fail`` fails instead."""
    job_log_tail_bytes: int = Field(default=1024 * 1024, ge=0, le=1024**3)
    """How much of the end of an over-limit log is kept (held in memory until the attempt ends); the head is the
    limit minus this."""
    log_spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024, le=1024**4)
    """Undelivered events kept on disk while the coordinator cannot be reached; past it the oldest log entries are
    dropped (never job or step state), and one entry says how many."""
    resource_limits: ResourceLimits = Field(default_factory=ResourceLimits)
    """Limits for each job: its cgroup (native), container (Docker) or pod's requests and limits (Kubernetes)."""
    docker_config: DockerConfig = Field(default_factory=DockerConfig)
    """Container settings for the Docker executor."""
    docker: DockerSettings = Field(default_factory=DockerSettings)
    """The Docker executor's image and pull policy."""
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    """The Kubernetes executor's cluster, namespace and pod settings."""
    native: NativeSettings = Field(default_factory=NativeSettings)
    """How the native executor enforces ``resource_limits``."""
    log: Log = Field(default_factory=Log)

    @property
    def workspaces(self) -> Path:
        """Absolute even when ``state_dir`` is relative (``make run`` keeps ``.rustci/``): a step runs in its
        working directory, where a relative path to its workspace or its script no longer resolves."""
        return (self.workspace_root or self.state_dir / "workspaces").absolute()

    @property
    def advertised_host(self) -> str:
        if self.listen.advertise_host:
            return self.listen.advertise_host
        if self.listen.host in ("0.0.0.0", "::", ""):
            return socket.gethostname()
        return self.listen.host

    @model_validator(mode="after")
    def _tail_within_limit(self) -> AgentConfig:
        if self.job_log_tail_bytes >= self.job_log_limit_bytes:
            raise ValueError("job_log_tail_bytes must be smaller than job_log_limit_bytes")
        return self


def load(path: Path | None) -> AgentConfig:
    return load_settings(AgentConfig, path, ENV_OVERRIDES)
