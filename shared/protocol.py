"""The agent channel: the one connection an agent opens to its coordinator, and every message it carries.

The agent opens a WebSocket at ``GET /api/runners/{runner_id}/channel`` (``Authorization: Bearer <runner
token>``) and keeps it. Both sides send *requests* and answer the other side's requests; every frame is one
JSON text message::

    {"id": 7, "kind": "job", "body": {...}}                 a request (ids are per sender, per connection)
    {"id": 7, "kind": "reply", "body": {...}}               its answer
    {"id": 7, "kind": "error", "status": 503, "body": {"error": {...}}}   or the spec's error envelope

Agent → coordinator: ``hello`` (first, once per connection: the runner's announcement), ``heartbeat`` and
``events`` (the outbox's batches, acknowledged with the highest sequence stored). Coordinator → agent:
:data:`AGENT_CALLS` (job delivery, cancel, configuration, control, live status and health).

Each request kind is one typed frame model here, used by both sides: the receiver validates a whole frame
from its raw JSON in one pass (pydantic-core, a discriminated union on ``kind``), so nothing is parsed twice.
"""

from __future__ import annotations

import json
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.models import (
    AgentState,
    EventBatch,
    Heartbeat,
    JobAssignment,
    Label,
    Request,
    Resources,
    RestartRequest,
    RunnerConfigUpdate,
    StopRequest,
)

CHANNEL_PATH = "/api/runners/{runner_id}/channel"
PROTOCOL_VERSION = 1
HELLO_TIMEOUT = 10.0
"""Seconds the coordinator waits for a new connection's ``hello`` before closing it."""


def channel_path(runner_id: str) -> str:
    return CHANNEL_PATH.format(runner_id=runner_id)


# --- bodies the other models do not cover -------------------------------------------------------------------


class Hello(Request):
    """The agent's announcement at every (re)connect: where it runs and what it offers (information only: the
    coordinator never connects to ``host``/``port``)."""

    protocol: int = PROTOCOL_VERSION
    version: str = Field(default="", max_length=64)
    host: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:\[\]_-]+$")
    port: int = Field(ge=0, le=65535, strict=True)
    capabilities: list[Label] = Field(default_factory=list, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict, max_length=64)
    tags: list[Label] = Field(default_factory=list, max_length=64)
    resources: Resources | None = None
    state: AgentState = "starting"


class Welcome(BaseModel):
    runner_id: str
    protocol: int = PROTOCOL_VERSION


class CancelRequest(Request):
    job_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(default="cancelled by user", max_length=1024)


class Empty(Request):
    pass


# --- frames -------------------------------------------------------------------------------------------------


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0)


class HelloFrame(_Frame):
    kind: Literal["hello"]
    body: Hello


class HeartbeatFrame(_Frame):
    kind: Literal["heartbeat"]
    body: Heartbeat


class EventsFrame(_Frame):
    kind: Literal["events"]
    body: EventBatch


class JobFrame(_Frame):
    kind: Literal["job"]
    body: JobAssignment


class CancelFrame(_Frame):
    kind: Literal["cancel"]
    body: CancelRequest


class ConfigPutFrame(_Frame):
    kind: Literal["config_put"]
    body: RunnerConfigUpdate


class StopFrame(_Frame):
    kind: Literal["stop"]
    body: StopRequest


class RestartFrame(_Frame):
    kind: Literal["restart"]
    body: RestartRequest


class QueryFrame(_Frame):
    """A request without a body: read the configuration, start the runner, live status, health."""

    kind: Literal["config_get", "start", "status", "health"]
    body: Empty = Field(default_factory=Empty)


class FrameId(BaseModel):
    """Just the id of a frame (to answer one that did not validate)."""

    id: int = 0


class ReplyFrame(_Frame):
    kind: Literal["reply"]
    body: dict[str, Any] = Field(default_factory=dict)


class ErrorFrame(_Frame):
    kind: Literal["error"]
    status: int = Field(ge=400, le=599)
    body: dict[str, Any]


AgentFrame = Annotated[HelloFrame | HeartbeatFrame | EventsFrame | ReplyFrame | ErrorFrame, Field(discriminator="kind")]
"""Everything an agent sends."""
CoordinatorFrame = Annotated[
    JobFrame | CancelFrame | ConfigPutFrame | StopFrame | RestartFrame | QueryFrame | ReplyFrame | ErrorFrame,
    Field(discriminator="kind"),
]
"""Everything a coordinator sends."""

AGENT_FRAMES: TypeAdapter[AgentFrame] = TypeAdapter(AgentFrame)
COORDINATOR_FRAMES: TypeAdapter[CoordinatorFrame] = TypeAdapter(CoordinatorFrame)

AgentCall = Literal["job", "cancel", "config_get", "config_put", "stop", "start", "restart", "status", "health"]
AGENT_CALLS: tuple[str, ...] = typing.get_args(AgentCall)
CoordinatorCall = Literal["hello", "heartbeat", "events"]


# --- encoding -----------------------------------------------------------------------------------------------


def request(frame_id: int, kind: str, body: BaseModel | dict[str, Any] | None = None) -> str:
    if body is None:
        encoded = "{}"
    elif isinstance(body, BaseModel):
        encoded = body.model_dump_json(exclude_unset=True)
    else:
        encoded = json.dumps(body, separators=(",", ":"))
    return raw_request(frame_id, kind, encoded)


def raw_request(frame_id: int, kind: str, body_json: str) -> str:
    """A request whose body is already encoded (the outbox's batches are joined in SQLite)."""
    return f'{{"id":{frame_id},"kind":"{kind}","body":{body_json}}}'


def reply(frame_id: int, body: BaseModel) -> str:
    return raw_reply(frame_id, body.model_dump_json())


def raw_reply(frame_id: int, body_json: str) -> str:
    """An answer whose body is already encoded (one the receiver sends often, encoded once)."""
    return f'{{"id":{frame_id},"kind":"reply","body":{body_json}}}'


def error(frame_id: int, status: int, envelope_json: str) -> str:
    return f'{{"id":{frame_id},"kind":"error","status":{status},"body":{envelope_json}}}'


# --- agent events: the outbox's entries ---------------------------------------------------------------------
#
# Each is encoded once, on the agent, compact and ASCII-only (so a body's length is its size in bytes), with
# ``kind`` first; the outbox numbers it and the sequence is spliced in front when a batch is read
# (``{"seq":N,`` + the body without its ``{``). Every encoder's output, so numbered, validates against the
# coordinator's models (``shared.models.JobEvent``, ``StepEvent``, ``LogEvent``).


def _encode(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def job_event(
    job_id: str,
    attempt: int,
    status: str,
    at: str,
    *,
    exit_code: int | None = None,
    reason: str | None = None,
    final: bool | None = None,
) -> str:
    """A job's state changed (``final``: this is its outcome; ``False``: an attempt ended, retries follow)."""
    event: dict[str, Any] = {"kind": "job", "job_id": job_id, "attempt": attempt, "status": status, "at": at}
    if final is not None:
        event.update(exit_code=exit_code, reason=reason, final=final)
    elif reason is not None:
        event["reason"] = reason
    return _encode(event)


def step_event(
    job_id: str, attempt: int, index: int, name: str, status: str, at: str, *, exit_code: int | None = None
) -> str:
    event = {"kind": "step", "job_id": job_id, "attempt": attempt, "index": index, "name": name, "status": status}
    event["at"] = at
    if status != "running":
        event["exit_code"] = exit_code
    return _encode(event)


def log_event(
    at: str,
    level: str,
    message: str,
    *,
    job_id: str | None = None,
    step: str | None = None,
    stream: str = "system",
    attempt: int | None = None,
) -> str:
    """One log entry: something the agent says (``stream`` system), or, through :func:`log_template`, a line."""
    entry: dict[str, Any] = {"kind": "log", "at": at, "level": level, "message": message}
    if job_id is not None:
        entry.update(job_id=job_id, stream=stream, attempt=attempt)
    else:
        entry["stream"] = stream
    if step:
        entry["step"] = step
    return _encode(entry)


LOG_START = '{"kind":"log","at":"'
"""How every log entry starts: ``LOG_START + at + middle + json-quoted message + end`` (:func:`log_template`)."""


def log_template(job_id: str, attempt: int, stream: str, step: str | None, level: str) -> tuple[str, str]:
    """The JSON of a log entry around its time and message, built once per step and stream (the line path
    then only quotes the text)."""
    step_json = json.dumps(step) if step is not None else "null"
    return (
        f'","level":"{level}","message":',
        f',"job_id":{json.dumps(job_id)},"step":{step_json},"stream":"{stream}","attempt":{attempt}}}',
    )
