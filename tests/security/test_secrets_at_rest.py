"""Masked values are never in plain text in the coordinator's database (WAL included), logs or API answers; a
held job still gets its secrets after a coordinator restart; a changed key cancels instead of leaking."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from agent.daemon import Agent
from coordinator import sealing
from shared.models import JobSubmission
from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import submit_job, wait_for

SECRET = "hunter2-very-secret-value-4711"
STEP_SECRET = "step-only-secret-value-0815"
# The steps check the value they got by its hash, so the secret itself is only in the masked variable.
CHECK = f'test "$(printf %s "$API_TOKEN" | sha256sum | cut -c1-64)" = "{hashlib.sha256(SECRET.encode()).hexdigest()}"'


def _database_bytes(coordinator: CoordinatorHandle) -> bytes:
    path = coordinator.config.database_path
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    assert files[0].exists() and files[1].exists()
    return b"".join(f.read_bytes() for f in files if f.exists())


async def _reconnected(agent: Agent) -> None:
    """The agent's channel is back after a coordinator restart (calls to the runner need it)."""

    async def connected() -> bool:
        return agent.channel.connected.is_set()

    await wait_for(connected, timeout=20, what="the agent's channel to reopen")


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode()]


async def test_no_masked_value_in_the_database_logs_or_answers(
    coordinator: CoordinatorHandle, start_agent: StartAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    job_id = await submit_job(
        coordinator.api,
        runner_id,
        "secret",
        CHECK,
        environment={"API_TOKEN": SECRET, "PLAIN": "visible"},
        masked=["API_TOKEN", "STEP_TOKEN"],
        steps=[
            {"name": "env", "run": f'{CHECK} && echo "token is $API_TOKEN"'},
            {"name": "step", "run": 'echo "step has $STEP_TOKEN"', "env": {"STEP_TOKEN": STEP_SECRET}},
        ],
    )
    done = await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed", "cancelled"})
    assert done["status"] == "completed", done  # the agent got the real values
    answers = [
        await coordinator.api.get(f"/runners/{runner_id}/jobs/{job_id}"),
        await coordinator.api.get(f"/runners/{runner_id}/jobs"),
        await coordinator.api.get(f"/runners/{runner_id}/logs?job_id={job_id}"),
    ]
    shown = repr(answers)
    assert "token is" in shown  # the log lines arrived, masked
    stored = _database_bytes(coordinator)
    assert b"visible" in stored  # the spec is there; only the masked values are sealed
    for secret in (SECRET, STEP_SECRET):
        for form in _forms(secret):
            assert form not in stored, f"{form!r} found in the database files"
        assert secret not in shown
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err


async def test_a_held_job_gets_its_secret_after_a_coordinator_restart(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    status, body = await coordinator.api.post(f"/runners/{runner_id}/stop", {"graceful": False})
    assert status == 200, body
    await coordinator.api.wait_runner_status(runner_id, "stopped")
    job_id = await submit_job(
        coordinator.api,
        runner_id,
        "held",
        CHECK,
        environment={"API_TOKEN": SECRET},
        masked=["API_TOKEN"],
    )
    await coordinator.restart()
    assert SECRET.encode() not in _database_bytes(coordinator)
    await _reconnected(agent)
    status, body = await coordinator.api.post(f"/runners/{runner_id}/start")
    assert status == 200, body
    done = await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed", "cancelled"})
    assert done["status"] == "completed", done


def test_a_changed_key_leaves_the_value_sealed(tmp_path: Path) -> None:
    spec = JobSubmission.model_validate(
        {"name": "j", "steps": [{"name": "s", "run": "true"}], "environment": {"K": SECRET}, "masked": ["K"]}
    )
    stored = sealing.Sealer.for_state_dir(tmp_path / "a").seal(spec)
    assert SECRET not in stored
    assert sealing.Sealer.for_state_dir(tmp_path / "a").unseal(stored, "job_1").environment["K"] == SECRET
    other = sealing.Sealer.for_state_dir(tmp_path / "b").unseal(stored, "job_1")
    assert other.environment["K"].startswith(sealing.PREFIX)
    assert sealing.still_sealed(other) == ["K"]
    assert (tmp_path / "a" / sealing.KEY_FILE).stat().st_mode & 0o777 == 0o600


async def test_a_held_job_whose_key_was_replaced_is_cancelled_not_sent(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    assert (await coordinator.api.post(f"/runners/{runner_id}/stop", {"graceful": False}))[0] == 200
    await coordinator.api.wait_runner_status(runner_id, "stopped")
    job_id = await submit_job(
        coordinator.api, runner_id, "held", CHECK, environment={"API_TOKEN": SECRET}, masked=["API_TOKEN"]
    )
    await coordinator.stop()
    (coordinator.config.state_dir / sealing.KEY_FILE).unlink()  # lost: a new key is made at start
    await coordinator.start()
    await _reconnected(agent)
    assert (await coordinator.api.post(f"/runners/{runner_id}/start"))[0] == 200
    done = await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed", "cancelled"})
    assert done["status"] == "cancelled" and "cannot be decrypted" in done["reason"], done


async def test_a_job_routed_by_tags_keeps_no_masked_value_in_plain_text(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    await start_agent()
    status, body = await coordinator.api.post(
        "/jobs",
        {
            "name": "routed-secret",
            "tags": [],
            "environment": {"API_TOKEN": SECRET, "PLAIN": "visible"},
            "masked": ["API_TOKEN"],
            "steps": [{"name": "env", "run": CHECK}],
        },
    )
    assert status == 201, body
    job_id = body["job_id"]

    async def finished() -> dict[str, object] | None:
        _, job = await coordinator.api.get(f"/jobs/{job_id}")
        return job if job.get("status") in {"completed", "failed", "cancelled"} else None

    done = await wait_for(finished, timeout=30)
    assert done["status"] == "completed", done  # the agent got the real value
    stored = _database_bytes(coordinator)
    assert b"visible" in stored
    for form in _forms(SECRET):
        assert form not in stored, f"{form!r} found in the database files"
