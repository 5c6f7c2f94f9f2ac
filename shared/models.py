"""The wire format: every body the coordinator, the agents and the SDK exchange, as pydantic models.

Requests are strict (unknown fields are refused, so a typo never silently does nothing); responses are
plain models serialised with ``to_wire``. Timestamps go out as ISO 8601 UTC with a ``Z``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from shared.timeutil import isoformat

Timestamp = Annotated[datetime, PlainSerializer(isoformat, return_type=str, when_used="json")]

RunnerType = Literal["docker", "kubernetes", "native", "local"]
RUNNER_TYPES: tuple[str, ...] = ("docker", "kubernetes", "native", "local")
RunnerStatus = Literal["active", "inactive", "error", "stopped", "starting", "restarting"]
RUNNER_STATUSES: tuple[str, ...] = ("active", "inactive", "error", "stopped", "starting", "restarting")
JobStatus = Literal["queued", "running", "completed", "failed", "timed_out", "cancelled"]
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "completed", "failed", "timed_out", "cancelled")
TERMINAL_JOB_STATUSES: frozenset[str] = frozenset({"completed", "failed", "timed_out", "cancelled"})
StepStatus = Literal["pending", "running", "completed", "failed", "timed_out", "cancelled", "skipped"]
AgentState = Literal["running", "stopped", "starting", "restarting", "error"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._:/@+-]*$"
MAX_LIST_LIMIT = 1000


class Request(BaseModel):
    """A body a client sends: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Response(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]


# --- runners -----------------------------------------------------------------------------------------------


class Resources(Request):
    cpu_cores: float | None = Field(default=None, ge=0, le=100_000)
    memory_gb: float | None = Field(default=None, ge=0, le=1_000_000)
    disk_gb: float | None = Field(default=None, ge=0, le=1_000_000_000)


class RunnerRegistration(Request):
    name: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    type: RunnerType
    host: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:\[\]_-]+$")
    port: int = Field(ge=1, le=65535, strict=True)  # strict: neither true nor "8081" is a port
    capabilities: list[Label] = Field(default_factory=list, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict, max_length=64)
    tags: list[Label] = Field(default_factory=list, max_length=64)
    resources: Resources | None = None


class RunnerUpdate(Request):
    """``PUT /runners/{id}``: only the fields given change; ``metadata`` is merged key by key."""

    name: str | None = Field(default=None, min_length=1, max_length=128, pattern=NAME_PATTERN)
    host: str | None = Field(default=None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:\[\]_-]+$")
    port: int | None = Field(default=None, ge=1, le=65535, strict=True)
    capabilities: list[Label] | None = Field(default=None, max_length=64)
    metadata: dict[str, Any] | None = Field(default=None, max_length=64)
    tags: list[Label] | None = Field(default=None, max_length=64)
    resources: Resources | None = None


class RegistrationResponse(Response):
    success: bool = True
    runner_id: str
    registration_token: str
    message: str = "Runner registered successfully"


class CurrentLoad(BaseModel):
    active_jobs: int = Field(default=0, ge=0)
    queued_jobs: int = Field(default=0, ge=0)
    cpu_usage: float = Field(default=0.0, ge=0)
    memory_usage: float = Field(default=0.0, ge=0)
    disk_usage: float = Field(default=0.0, ge=0)


class RunnerStatistics(Response):
    total_jobs_executed: int = 0
    successful_jobs: int = 0
    failed_jobs: int = 0
    average_execution_time: float = 0.0
    uptime_percentage: float = 0.0


class RunnerView(Response):
    id: str
    name: str
    type: RunnerType
    status: RunnerStatus
    host: str
    port: int
    capabilities: list[str]
    tags: list[str]
    metadata: dict[str, Any]
    resources: dict[str, Any]
    current_load: CurrentLoad
    statistics: RunnerStatistics | None = None


class RunnerList(Response):
    runners: list[RunnerView]
    total_count: int
    has_more: bool


class Ok(Response):
    success: bool = True
    message: str


class Identity(Response):
    """``GET /api/whoami`` and ``POST /api/session``: who the caller is. A dashboard session adds its CSRF token
    (send it as ``X-RustCI-CSRF`` on every change) and when it ends."""

    role: str
    subject: str
    csrf_token: str | None = None
    expires_at: Timestamp | None = None


# --- jobs --------------------------------------------------------------------------------------------------

EnvName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def _exec_safe(value: str) -> str:
    """Refuse what ``execve`` cannot take: a NUL ends a C string, and a lone surrogate has no UTF-8 bytes.

    Checked at submission so the client hears which field is wrong, instead of a job that cannot start."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it contains a lone surrogate such as \\ud800)") from None
    return value


ExecText = Annotated[str, AfterValidator(_exec_safe)]
"""Text that reaches a process: a step's script, an environment value, a working directory."""

MIN_MASKED_LENGTH = 4
"""A masked value shorter than this is refused: masking it would garble ordinary output."""
MAX_TIMEOUT = 7 * 24 * 3600


class StepSpec(Request):
    name: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    run: ExecText = Field(min_length=1, max_length=1_000_000)
    env: dict[EnvName, ExecText] = Field(default_factory=dict)
    timeout: int | None = Field(default=None, gt=0, le=MAX_TIMEOUT)
    continue_on_error: bool = False
    working_directory: ExecText | None = Field(default=None, max_length=1024)

    @field_validator("working_directory")
    @classmethod
    def _inside_workspace(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("/") or ".." in value.replace("\\", "/").split("/"):
            raise ValueError("must be a relative path inside the job workspace, without '..'")
        return value


class JobSubmission(Request):
    name: str = Field(min_length=1, max_length=256, pattern=NAME_PATTERN)
    steps: list[StepSpec] = Field(min_length=1, max_length=200)
    environment: dict[EnvName, ExecText] = Field(default_factory=dict)
    image: str | None = Field(default=None, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
    """Container image for the job's steps (Docker and Kubernetes runners; default: the runner's image).
    Native runners run steps on the host and ignore it."""
    timeout: int | None = Field(default=None, gt=0, le=MAX_TIMEOUT)
    retry_count: int = Field(default=0, ge=0, le=10)
    masked: list[EnvName] = Field(default_factory=list, max_length=100)
    """Variables (of ``environment`` or a step's ``env``) whose values the logs show as ``[MASKED]``."""
    on_log_limit: Literal["truncate", "fail"] = "truncate"
    """Past the runner's per-job log limit: keep the head and the tail of the log, or fail the job."""

    @field_validator("steps")
    @classmethod
    def _unique_step_names(cls, steps: list[StepSpec]) -> list[StepSpec]:
        seen: set[str] = set()
        for step in steps:
            if step.name in seen:
                raise ValueError(f"step names must be unique; '{step.name}' appears twice")
            seen.add(step.name)
        return steps

    @field_validator("masked")
    @classmethod
    def _maskable(cls, names: list[str], info: ValidationInfo) -> list[str]:
        if "environment" not in info.data or "steps" not in info.data:
            return names  # their own errors are reported
        environment: dict[str, str] = info.data["environment"]
        steps: list[StepSpec] = info.data["steps"]
        for name in names:
            values = [environment[name]] if name in environment else []
            values += [step.env[name] for step in steps if name in step.env]
            if not values:
                raise ValueError(f"masked variable '{name}' is not set in environment or in any step's env")
            if any(len(value) < MIN_MASKED_LENGTH for value in values):
                raise ValueError(
                    f"masked variable '{name}' is shorter than {MIN_MASKED_LENGTH} characters;"
                    " masking so short a value would garble the logs"
                )
        return names


class JobSubmitResponse(Response):
    success: bool = True
    job_id: str
    runner_id: str
    status: JobStatus
    estimated_start_time: Timestamp | None = None


class StepResult(Response):
    name: str
    status: StepStatus
    exit_code: int | None = None
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    duration: float | None = None


class JobAttempt(Response):
    attempt: int
    status: JobStatus
    exit_code: int | None = None
    reason: str | None = None
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    duration: float | None = None


class JobSummary(Response):
    job_id: str
    name: str
    status: JobStatus
    created_at: Timestamp
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    duration: float | None = None
    exit_code: int | None = None


class JobDetail(JobSummary):
    runner_id: str
    reason: str | None = None
    attempt: int = 0
    timeout: int | None = None
    retry_count: int = 0
    steps: list[StepResult]
    attempts: list[JobAttempt] = Field(default_factory=list)


class JobList(Response):
    runner_id: str
    jobs: list[JobSummary]
    total_count: int
    has_more: bool


# --- jobs submitted to the fleet (routed by tags) -------------------------------------------------------------


class FleetJobSubmission(JobSubmission):
    """``POST /jobs``: a job for any runner that has all of ``tags`` (and is of ``type``, if given)."""

    tags: list[Label] = Field(default_factory=list, max_length=64)
    type: RunnerType | None = None

    def job(self) -> JobSubmission:
        """The job itself, as its runner's agent receives it."""
        return JobSubmission.model_validate(self.model_dump(exclude={"tags", "type"}, exclude_unset=True))


class FleetJobSubmitResponse(Response):
    success: bool = True
    job_id: str
    runner_id: str | None
    """``None`` while no runner qualifies: the job is held by the coordinator until one does."""
    status: JobStatus
    tags: list[str]
    estimated_start_time: Timestamp | None = None


class FleetJobSummary(JobSummary):
    runner_id: str | None
    tags: list[str] = Field(default_factory=list)
    """The tags it was routed by (empty for a job submitted to one runner)."""
    type: RunnerType | None = None


class FleetJobList(Response):
    jobs: list[FleetJobSummary]
    total_count: int
    has_more: bool


class FleetJobDetail(FleetJobSummary):
    """``GET /jobs/{id}``: the job detail of ``GET /runners/{id}/jobs/{job_id}`` plus how it was routed."""

    reason: str | None = None
    attempt: int = 0
    timeout: int | None = None
    retry_count: int = 0
    steps: list[StepResult]
    attempts: list[JobAttempt] = Field(default_factory=list)
    assigned_at: Timestamp | None = None


# --- agent <-> coordinator -----------------------------------------------------------------------------------


class JobAssignment(Request):
    """A job the coordinator hands to an agent. Delivering the same job twice is harmless."""

    job_id: str
    runner_id: str
    created_at: Timestamp
    spec: JobSubmission


class AssignmentAck(Response):
    accepted: bool = True
    job_id: str
    status: JobStatus


class MetricSample(Request):
    """One reading of the agent host's load, taken every ``metrics_interval`` and shipped with a heartbeat.

    The sample's time is its identity: a heartbeat resent after a lost answer stores nothing twice."""

    at: Timestamp
    cpu_usage: float = Field(ge=0, le=100)
    memory_usage: float = Field(ge=0, le=100)
    disk_usage: float = Field(ge=0, le=100)
    active_jobs: int = Field(ge=0, le=1_000_000)


MAX_SAMPLES_PER_HEARTBEAT = 1000


class Heartbeat(Request):
    load: CurrentLoad
    state: AgentState = "running"
    heartbeat_interval: float = Field(gt=0, le=3600)
    samples: list[MetricSample] = Field(default_factory=list, max_length=MAX_SAMPLES_PER_HEARTBEAT)


class HeartbeatAck(Response):
    runner_id: str
    status: RunnerStatus


class JobEvent(Request):
    """A job's state changed on the agent. Identity for deduplication: the batch sequence number."""

    kind: Literal["job"] = "job"
    seq: int = Field(ge=1)
    job_id: str
    attempt: int = Field(ge=0)
    status: JobStatus
    at: Timestamp
    exit_code: int | None = None
    reason: str | None = None
    # True when this is the job's outcome; False for an attempt that ended with retries still to come.
    final: bool = False


class StepEvent(Request):
    kind: Literal["step"] = "step"
    seq: int = Field(ge=1)
    job_id: str
    attempt: int = Field(ge=0)
    index: int = Field(ge=0)
    name: str
    status: StepStatus
    at: Timestamp
    exit_code: int | None = None


LogLevel = Literal["debug", "info", "warn", "error"]
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warn", "error")


class LogEvent(Request):
    """One log entry: a line a step printed, or something the agent says about a job."""

    kind: Literal["log"] = "log"
    seq: int = Field(ge=1)
    at: Timestamp
    level: LogLevel
    # Kept exactly as printed: indentation carries meaning in YAML output and tracebacks.
    message: Annotated[str, StringConstraints(strip_whitespace=False)]
    job_id: str | None = None
    step: str | None = None
    stream: Literal["stdout", "stderr", "system"] = "system"
    attempt: int | None = None


AgentEvent = Annotated[JobEvent | StepEvent | LogEvent, Field(discriminator="kind")]


class EventBatch(Request):
    events: list[AgentEvent] = Field(max_length=10_000)


class EventAck(Response):
    acked_seq: int


# --- runner configuration and control ---------------------------------------------------------------------

CleanupPolicy = Literal["always", "on_success", "never"]
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|K|M|G|T)?$", max_length=32)]
VolumeSpec = Annotated[str, Field(pattern=r"^[^:\s]+:/[^:\s]*(:(ro|rw))?$", max_length=1024)]


class ResourceLimits(Request):
    cpu_limit: Quantity | None = None
    memory_limit: Quantity | None = None
    disk_limit: Quantity | None = None


class DockerConfig(Request):
    privileged: bool = False
    network_mode: str = Field(default="bridge", pattern=r"^(bridge|host|none|container:[A-Za-z0-9_.-]+)$")
    volumes: list[VolumeSpec] = Field(default_factory=list, max_length=64)


class RunnerConfiguration(Response):
    max_concurrent_jobs: int
    job_timeout: int
    cleanup_policy: CleanupPolicy
    kill_grace_period: float
    resource_limits: ResourceLimits
    docker_config: DockerConfig


class RunnerConfigUpdate(Request):
    """``PUT /runners/{id}/config``: every field optional, all validated before anything changes."""

    # strict: neither true nor "3" is a number of jobs or seconds
    max_concurrent_jobs: int | None = Field(default=None, ge=1, le=1000, strict=True)
    job_timeout: int | None = Field(default=None, gt=0, le=MAX_TIMEOUT, strict=True)
    cleanup_policy: CleanupPolicy | None = None
    kill_grace_period: float | None = Field(default=None, ge=0, le=3600, strict=True)
    resource_limits: ResourceLimits | None = None
    docker_config: DockerConfig | None = None


class RunnerConfigView(Response):
    runner_id: str
    configuration: RunnerConfiguration
    last_updated: Timestamp


class ConfigUpdateResult(Response):
    success: bool = True
    message: str = "Configuration updated successfully"
    restart_required: bool = False
    restart_required_fields: list[str] = Field(default_factory=list)


class StopRequest(Request):
    graceful: bool = True
    timeout: float | None = Field(default=None, ge=0, le=24 * 3600)
    reason: str | None = Field(default=None, max_length=500)


class RestartRequest(Request):
    graceful: bool = True
    timeout: float | None = Field(default=None, ge=0, le=24 * 3600)


class ControlResult(Response):
    success: bool = True
    message: str
    status: str


class CancelResult(Response):
    success: bool = True
    job_id: str
    status: JobStatus | Literal["cancelling"]
    message: str


class BulkFilters(Request):
    status: RunnerStatus | None = None
    type: RunnerType | None = None
    tags: list[Label] = Field(default_factory=list, max_length=64)


class BulkRequest(Request):
    # ``filters`` is required (``{}`` for every runner): the handler refuses a body without it, after checking
    # ``data``; the schema says so too.
    model_config = ConfigDict(json_schema_extra={"required": ["operation", "filters"]})

    operation: Literal["update_config", "start", "stop", "restart", "delete"]
    filters: BulkFilters = Field(default_factory=BulkFilters)
    data: dict[str, Any] | None = None


class BulkItemError(Response):
    code: str
    message: str


class BulkItem(Response):
    runner_id: str
    success: bool
    error: BulkItemError | None = None


class BulkResult(Response):
    success: bool
    affected_runners: int
    results: list[BulkItem]


# --- runner status, health and metrics history ---------------------------------------------------------------

HealthState = Literal["healthy", "degraded", "unhealthy"]
CapabilityState = Literal["available", "unavailable"]
CheckStatus = Literal["pass", "warn", "fail", "unknown"]


class RunnerStatusView(Response):
    """``GET /runners/{id}/status``; the agent answers the same shape for its own runner."""

    runner_id: str
    status: RunnerStatus
    health: HealthState
    last_heartbeat: Timestamp | None = None
    current_load: CurrentLoad
    capabilities_status: dict[str, CapabilityState]


class HealthCheck(Response):
    """One check: its ``status`` and whatever it measured (``response_time_ms``, ``version``, ``available_gb``,
    ``error``) as extra keys, so each check carries only the fields that mean something for it."""

    status: CheckStatus


class RunnerHealthView(Response):
    """``GET /runners/{id}/health``; the agent answers the same shape without ``connectivity``."""

    runner_id: str
    health: HealthState
    checks: dict[str, HealthCheck]
    last_check: Timestamp


def overall_health(checks: dict[str, HealthCheck]) -> HealthState:
    """Any failed (or unknowable) check makes the runner unhealthy; any warning, degraded."""
    statuses = {check.status for check in checks.values()}
    if statuses & {"fail", "unknown"}:
        return "unhealthy"
    return "degraded" if "warn" in statuses else "healthy"


class MetricPoint(Response):
    timestamp: Timestamp
    value: float


class MetricsSummary(Response):
    """Over the whole period; the averages and maxima are ``null`` when the period holds no sample."""

    avg_cpu_usage: float | None = None
    max_cpu_usage: float | None = None
    avg_memory_usage: float | None = None
    max_memory_usage: float | None = None
    total_jobs_executed: int = 0


class RunnerMetrics(Response):
    runner_id: str
    period: str
    resolution: str
    metrics: dict[str, list[MetricPoint]]
    summary: MetricsSummary


# --- logs ----------------------------------------------------------------------------------------------------


class LogContext(Response):
    job_id: str | None = None
    step: str | None = None
    stream: str | None = None
    attempt: int | None = None


class LogEntryView(Response):
    seq: int
    timestamp: Timestamp
    level: LogLevel
    message: str
    context: LogContext


class LogPage(Response):
    runner_id: str
    logs: list[LogEntryView]
    total_count: int
    has_more: bool


# --- security: tickets and the audit trail ---------------------------------------------------------------------


class TicketResponse(Response):
    ticket: str
    """Single-use: valid for one connection opened within ``expires_in`` seconds."""
    expires_in: float
    expires_at: Timestamp
    routes: list[str]
    """Where ``?ticket=`` is accepted."""


class AuditEntry(Response):
    id: int
    timestamp: Timestamp
    principal: str
    """``key:<name>``, ``user:<jwt sub>``, ``runner:<id>``, or ``anonymous``."""
    role: str | None = None
    client: str
    """The client's address (from ``X-Forwarded-For`` only behind a trusted proxy)."""
    action: str
    method: str
    path: str
    runner_id: str | None = None
    job_id: str | None = None
    status: int
    """The HTTP status the call answered."""
    outcome: Literal["success", "refused", "failed"]
    detail: str | None = None


class AuditList(Response):
    entries: list[AuditEntry]
    total_count: int
    has_more: bool
