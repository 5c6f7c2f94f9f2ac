"""One definition of the channel's protocol: every encoder's output is what the coordinator's models accept."""

from __future__ import annotations

import typing

import pytest
from pydantic import TypeAdapter

from agent.logsink import now
from shared import protocol
from shared.models import AgentEvent, EventBatch, JobEvent, LogEvent, StepEvent

EVENTS: TypeAdapter[AgentEvent] = TypeAdapter(AgentEvent)


def numbered(body: str, seq: int = 7) -> str:
    """What the outbox does to a stored body when it reads a batch: the sequence spliced in front."""
    return '{"seq":' + str(seq) + "," + body[1:]


ENCODED = {
    "job running": (protocol.job_event("job_1", 1, "running", now()), JobEvent),
    "job outcome": (
        protocol.job_event("job_1", 2, "failed", now(), exit_code=3, reason="step 's' failed", final=True),
        JobEvent,
    ),
    "job interrupted": (
        protocol.job_event("job_1", 1, "failed", now(), reason="agent restarted", final=False),
        JobEvent,
    ),
    "step running": (protocol.step_event("job_1", 1, 0, "build", "running", now()), StepEvent),
    "step finished": (protocol.step_event("job_1", 1, 0, "build", "completed", now(), exit_code=0), StepEvent),
    "system entry": (protocol.log_event(now(), "info", "Job started", job_id="job_1", attempt=1), LogEvent),
    "step entry": (protocol.log_event(now(), "error", "Step failed", job_id="job_1", step="s", attempt=1), LogEvent),
    "runner entry": (protocol.log_event(now(), "warn", "Dropped 3 log entries ünïcode"), LogEvent),
}


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_every_encoder_validates_against_the_coordinators_model(name: str) -> None:
    body, model = ENCODED[name]
    assert body.isascii(), "bodies are ASCII-only, so their length is their size in bytes"
    assert body.startswith('{"kind":"'), "state events are recognised by their prefix"
    event = EVENTS.validate_json(numbered(body))
    assert isinstance(event, model) and event.seq == 7


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_line_built_from_the_template_validates(stream: str) -> None:
    middle, end = protocol.log_template("job_1", 2, stream, 'step "quoted"', "info")
    body = protocol.LOG_START + now() + middle + '"line \\u00e9"' + end
    event = EVENTS.validate_json(numbered(body))
    assert isinstance(event, LogEvent)
    assert (event.stream, event.step, event.message, event.attempt) == (stream, 'step "quoted"', "line é", 2)


def test_an_events_frame_carries_the_batch_the_http_route_takes() -> None:
    events = ",".join(numbered(body, seq) for seq, (body, _) in enumerate(ENCODED.values(), start=1))
    frame = protocol.AGENT_FRAMES.validate_json(protocol.raw_request(4, "events", f'{{"events":[{events}]}}'))
    assert isinstance(frame, protocol.EventsFrame)
    assert frame.body == EventBatch.model_validate_json(f'{{"events":[{events}]}}')


def test_every_call_the_coordinator_makes_has_a_frame_the_agent_validates() -> None:
    bodies: dict[str, typing.Any] = {
        "job": {
            "job_id": "job_1",
            "runner_id": "runner_1",
            "created_at": "2026-01-01T00:00:00Z",
            "spec": {"name": "j", "steps": [{"name": "s", "run": "true"}]},
        },
        "cancel": protocol.CancelRequest(job_id="job_1"),
        "config_put": {"max_concurrent_jobs": 2},
        "stop": {"graceful": False},
        "restart": {},
    }
    for kind in protocol.AGENT_CALLS:
        frame = protocol.COORDINATOR_FRAMES.validate_json(protocol.request(9, kind, bodies.get(kind)))
        assert (frame.id, frame.kind) == (9, kind)


def test_a_reply_and_an_error_are_matched_by_id() -> None:
    reply = protocol.AGENT_FRAMES.validate_json(protocol.reply(3, protocol.Welcome(runner_id="runner_1")))
    assert isinstance(reply, protocol.ReplyFrame) and reply.id == 3 and reply.body["runner_id"] == "runner_1"
    error = protocol.COORDINATOR_FRAMES.validate_json(protocol.error(5, 503, '{"error":{"code":"X"}}'))
    assert isinstance(error, protocol.ErrorFrame) and (error.id, error.status) == (5, 503)
