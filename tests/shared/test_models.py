"""The wire format: timestamps as ISO 8601 UTC with ``Z``, id formats, strict requests, the error envelope."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from shared import ids
from shared.errors import (
    ERRORS_BY_CODE,
    ApiError,
    InternalError,
    InvalidRequest,
    JobNotFound,
    RunnerNotFound,
    RunnerUnavailable,
    from_envelope,
)
from shared.models import JobAssignment, JobEvent, JobSubmission, JobSummary, RunnerRegistration, StepSpec
from shared.timeutil import from_epoch, isoformat, parse_iso
from tests.helpers import ISO_UTC_PATTERN, JOB_ID_PATTERN, RUNNER_ID_PATTERN

# --- timestamps ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2024, 1, 15, 10, 30, 0, tzinfo=UTC), "2024-01-15T10:30:00.000Z"),
        (datetime(2024, 1, 15, 10, 30, 0, 123_999, tzinfo=UTC), "2024-01-15T10:30:00.123Z"),
        (datetime(2024, 1, 15, 12, 30, 0, tzinfo=timezone(timedelta(hours=2))), "2024-01-15T10:30:00.000Z"),
        (datetime(2024, 1, 15, 5, 0, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))), "2024-01-15T10:30:00.000Z"),
        (datetime(2024, 1, 15, 10, 30, 0), "2024-01-15T10:30:00.000Z"),  # naive is taken as UTC
        (datetime(2023, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "2023-12-31T23:59:59.999Z"),
    ],
)
def test_isoformat_is_utc_with_milliseconds_and_z(moment: datetime, text: str) -> None:
    assert isoformat(moment) == text
    assert re.match(ISO_UTC_PATTERN, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15T10:30:00Z", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T10:30:00.250Z", datetime(2024, 1, 15, 10, 30, 0, 250_000, tzinfo=UTC)),
        ("2024-01-15T10:30:00z", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T12:30:00+02:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T10:30:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        (" 2024-01-15T10:30:00Z ", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15 10:30", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
    ],
)
def test_parse_iso_gives_aware_utc(text: str, expected: datetime) -> None:
    parsed = parse_iso(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["", "yesterday", "2024-13-01T00:00:00Z", "2024-01-15T25:00:00Z", "1705314600"])
def test_parse_iso_refuses_what_is_not_a_timestamp(text: str) -> None:
    with pytest.raises(ValueError):
        parse_iso(text)


@pytest.mark.parametrize("text", ["2024-01-15T10:30:00.000Z", "1999-12-31T23:59:59.999Z", "2038-01-19T03:14:08.001Z"])
def test_timestamps_round_trip_text_to_datetime_and_back(text: str) -> None:
    assert isoformat(parse_iso(text)) == text


def test_epoch_seconds_round_trip_to_the_millisecond() -> None:
    seconds = 1_705_314_600.1239
    text = isoformat(from_epoch(seconds))
    assert text == "2024-01-15T10:30:00.123Z"
    assert abs(parse_iso(text).timestamp() - seconds) < 0.001


def test_model_timestamps_go_out_with_z_and_come_back_equal() -> None:
    created = datetime(2024, 1, 15, 10, 0, 0, 500_000, tzinfo=UTC)
    summary = JobSummary(job_id=ids.new_job_id(), name="j", status="completed", created_at=created, exit_code=0)
    wire = summary.to_wire()
    assert wire["created_at"] == "2024-01-15T10:00:00.500Z"
    assert wire["started_at"] is None and wire["completed_at"] is None
    back = JobSummary.model_validate(wire)
    assert back.created_at == created
    assert back.to_wire() == wire
    # the Python-mode dump keeps datetimes (only JSON gets text)
    assert summary.model_dump()["created_at"] == created


def test_a_job_assignment_survives_the_trip_to_the_agent() -> None:
    spec = JobSubmission.model_validate(
        {
            "name": "test-job",
            "steps": [{"name": "build", "run": "make", "env": {"CC": "clang"}, "timeout": 60}],
            "environment": {"NODE_ENV": "test"},
            "timeout": 300,
            "retry_count": 2,
        }
    )
    assignment = JobAssignment(
        job_id=ids.new_job_id(),
        runner_id=ids.new_runner_id(),
        created_at=from_epoch(1_705_314_600.5),
        spec=spec,
    )
    wire = assignment.model_dump(mode="json")
    assert wire["created_at"] == "2024-01-15T10:30:00.500Z"
    back = JobAssignment.model_validate(wire)
    assert back == assignment
    assert back.model_dump_json() == assignment.model_dump_json()


def test_agent_events_parse_z_timestamps() -> None:
    event = JobEvent.model_validate(
        {"seq": 1, "job_id": "job_x", "attempt": 1, "status": "completed", "at": "2024-01-15T10:30:00.123Z"}
    )
    assert event.at == datetime(2024, 1, 15, 10, 30, 0, 123_000, tzinfo=UTC)
    assert event.model_dump(mode="json")["at"] == "2024-01-15T10:30:00.123Z"


# --- ids -----------------------------------------------------------------------------------------------------


def test_runner_and_job_ids_are_prefixed_uuid4s() -> None:
    runner_ids = {ids.new_runner_id() for _ in range(500)}
    job_ids = {ids.new_job_id() for _ in range(500)}
    assert len(runner_ids) == 500 and len(job_ids) == 500
    for runner_id in runner_ids:
        assert re.match(RUNNER_ID_PATTERN, runner_id), runner_id
        assert ids.RUNNER_ID_RE.match(runner_id)
        assert uuid.UUID(runner_id.removeprefix("runner_")).version == 4
        assert not ids.JOB_ID_RE.match(runner_id)
    for job_id in job_ids:
        assert re.match(JOB_ID_PATTERN, job_id), job_id
        assert ids.JOB_ID_RE.match(job_id)
        assert uuid.UUID(job_id.removeprefix("job_")).version == 4
        assert not ids.RUNNER_ID_RE.match(job_id)


@pytest.mark.parametrize(
    "text",
    [
        "runner_123",
        "runner_123E4567-E89B-12D3-A456-426614174000",
        "runner-123e4567-e89b-12d3-a456-426614174000",
        "runner_123e4567-e89b-12d3-a456-426614174000\n",
        " runner_123e4567-e89b-12d3-a456-426614174000",
    ],
)
def test_malformed_runner_ids_do_not_match(text: str) -> None:
    assert not ids.RUNNER_ID_RE.match(text)


def test_tokens_and_keys_are_random_and_distinct() -> None:
    tokens = {ids.new_runner_token() for _ in range(200)}
    keys = {ids.new_api_key() for _ in range(200)}
    assert len(tokens) == 200 and len(keys) == 200
    for token in tokens:
        assert token.startswith(ids.TOKEN_PREFIX)
        assert re.fullmatch(r"reg_token_[A-Za-z0-9_-]{43}", token), token
    for key in keys:
        assert re.fullmatch(r"rk_[A-Za-z0-9_-]{43}", key), key
    assert not tokens & keys


# --- strict requests ------------------------------------------------------------------------------------------


def _registration(**overrides: Any) -> dict[str, Any]:
    return {"name": "r", "type": "native", "host": "localhost", "port": 8081, **overrides}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"port": True}, "port"),
        ({"port": "8081"}, "port"),
        ({"port": 0}, "port"),
        ({"type": "Docker"}, "type"),
        ({"name": ""}, "name"),
        ({"name": "-leading-dash"}, "name"),
        ({"host": "evil host"}, "host"),
        ({"tags": ["ok", ""]}, "tags"),
    ],
)
def test_registration_refuses_bad_input(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RunnerRegistration.model_validate(_registration(**overrides))
    assert caught.value.errors()[0]["loc"][0] == field


def test_registration_strips_whitespace_and_defaults_lists() -> None:
    parsed = RunnerRegistration.model_validate(_registration(name="  spaced  "))
    assert parsed.name == "spaced"
    assert (parsed.capabilities, parsed.tags, parsed.metadata, parsed.resources) == ([], [], {}, None)


@pytest.mark.parametrize("directory", ["/etc", "../up", "a/../../b", "a\\..\\b"])
def test_a_step_cannot_leave_its_workspace(directory: str) -> None:
    with pytest.raises(ValidationError):
        StepSpec.model_validate({"name": "s", "run": "true", "working_directory": directory})
    assert StepSpec.model_validate({"name": "s", "run": "true", "working_directory": "sub/dir"})


def test_job_submission_checks_step_names_and_environment_names() -> None:
    with pytest.raises(ValidationError, match="unique"):
        JobSubmission.model_validate(
            {"name": "j", "steps": [{"name": "s", "run": "true"}, {"name": "s", "run": "false"}]}
        )
    for bad in ("1BAD", "A-B", "", "A B"):
        with pytest.raises(ValidationError):
            JobSubmission.model_validate(
                {"name": "j", "steps": [{"name": "s", "run": "true"}], "environment": {bad: "x"}}
            )
    ok = JobSubmission.model_validate(
        {"name": "j", "steps": [{"name": "s", "run": "true"}], "environment": {"_A1": ""}}
    )
    assert ok.environment == {"_A1": ""} and ok.retry_count == 0 and ok.timeout is None


# --- the error envelope ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        RunnerNotFound("runner_123"),
        JobNotFound("job_1", "runner_2"),
        InvalidRequest("Invalid request body: port: too big", field="port"),
        RunnerUnavailable("Runner 'x' did not answer within 2s", runner_id="x", host="h", port=1),
    ],
)
def test_the_error_envelope_round_trips_to_the_same_typed_error(error: ApiError) -> None:
    envelope = error.envelope()
    assert envelope["success"] is False
    assert envelope["error"]["code"] == error.code
    assert envelope["error"]["message"] == error.message
    assert re.match(ISO_UTC_PATTERN, envelope["error"]["details"]["timestamp"])
    back = from_envelope(error.status, envelope)
    assert type(back) is type(error)
    assert (back.code, back.status, back.message, back.details) == (
        error.code,
        error.status,
        error.message,
        error.details,
    )


def test_every_error_code_is_unique_and_maps_back() -> None:
    assert ERRORS_BY_CODE["RUNNER_NOT_FOUND"] is RunnerNotFound
    assert ERRORS_BY_CODE["RUNNER_UNAVAILABLE"] is RunnerUnavailable
    assert (RunnerNotFound.status, JobNotFound.status, InvalidRequest.status, RunnerUnavailable.status) == (
        404,
        404,
        400,
        503,
    )


@pytest.mark.parametrize(
    "body",
    [None, "oops", [], {"error": "text"}, {"error": {"code": "NO_SUCH_CODE", "message": "m"}}],
)
def test_a_malformed_or_unknown_envelope_becomes_internal_error(body: Any) -> None:
    error = from_envelope(502, body)
    assert isinstance(error, InternalError)
    assert error.code == "INTERNAL_ERROR"
