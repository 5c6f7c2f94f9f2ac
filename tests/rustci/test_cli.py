"""The ``rustci`` command line against a real in-process coordinator and agent (``main()`` runs in a thread)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rustci import cli
from tests.conftest import API_KEY, CoordinatorHandle, StartAgent
from tests.helpers import free_port, register_runner

Run = Callable[..., Awaitable[tuple[int, Any, str]]]


@pytest.fixture
def rustci(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """``code, json, stderr = await rustci(*argv)``: runs ``rustci ARGV`` in a thread.

    The printed JSON is taken where the CLI prints it: stdout also carries the in-process daemons' logs.
    """
    printed: list[Any] = []
    monkeypatch.setattr(cli, "_print_json", lambda data: printed.append(json.loads(json.dumps(data))))

    async def run(*argv: str) -> tuple[int, Any, str]:
        printed.clear()
        code = await asyncio.to_thread(cli.main, list(argv))
        assert len(printed) <= 1, printed
        return code, printed[0] if printed else None, capsys.readouterr().err

    return run


@pytest.fixture
def connected(coordinator: CoordinatorHandle, monkeypatch: pytest.MonkeyPatch) -> CoordinatorHandle:
    monkeypatch.setenv("RUSTCI_URL", coordinator.url)
    monkeypatch.setenv("RUSTCI_API_KEY", API_KEY)
    return coordinator


async def test_submit_and_wait_then_list_and_get(
    connected: CoordinatorHandle, start_agent: StartAgent, rustci: Run
) -> None:
    runner_id = (await start_agent()).identity().runner_id
    code, job, _ = await rustci(
        *("jobs", "submit", "--runner", runner_id, "--name", "cli-job"),
        *("--step", "build=echo building", "--step", 'test=test "$MODE" = ci'),
        *("--env", "MODE=ci", "--wait", "--wait-timeout", "30"),
    )
    assert code == 0, job
    assert job["status"] == "completed"
    assert [step["name"] for step in job["steps"]] == ["build", "test"]

    code, listed, _ = await rustci("jobs", "list", "--runner", runner_id)
    assert code == 0 and [j["job_id"] for j in listed["jobs"]] == [job["job_id"]]
    code, got, _ = await rustci("jobs", "get", "--runner", runner_id, job["job_id"])
    assert code == 0 and got["name"] == "cli-job"


async def test_a_failed_job_fails_the_command_with_wait(
    connected: CoordinatorHandle, start_agent: StartAgent, rustci: Run
) -> None:
    runner_id = (await start_agent()).identity().runner_id
    argv = ("jobs", "submit", "--runner", runner_id, "--name", "bad", "--step", "boom=exit 3", "--wait")
    code, job, _ = await rustci(*argv)
    assert code == 1
    assert job["status"] == "failed" and job["exit_code"] == 3


async def test_runners_list_get_delete(connected: CoordinatorHandle, rustci: Run) -> None:
    runner_id = (await register_runner(connected.api, port=free_port(), tags=["cli"]))["runner_id"]
    code, listed, _ = await rustci("runners", "list", "--tags", "cli", "--status", "active")
    assert code == 0 and [r["id"] for r in listed["runners"]] == [runner_id]
    code, runner, _ = await rustci("runners", "get", runner_id)
    assert code == 0 and runner["id"] == runner_id
    code, deleted, _ = await rustci("runners", "delete", runner_id)
    assert code == 0 and deleted["success"] is True

    code, out, err = await rustci("runners", "get", runner_id)
    assert code == 1 and out is None
    assert err.startswith("rustci: RUNNER_NOT_FOUND:")


async def test_key_from_option_and_from_the_local_state(
    coordinator: CoordinatorHandle,
    rustci: Run,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("RUSTCI_API_KEY", raising=False)
    monkeypatch.delenv("RUSTCI_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    # Options work after the subcommand too.
    code, _, _ = await rustci("runners", "list", "--url", coordinator.url, "--api-key", API_KEY)
    assert code == 0
    code, _, err = await rustci("--url", coordinator.url, "runners", "list")
    assert code == 1 and "AUTHENTICATION_REQUIRED" in err
    # What `rustci local up` leaves in the working directory is picked up.
    key_file = tmp_path / ".rustci" / "coordinator" / "admin-api-key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(API_KEY + "\n")
    code, listed, _ = await rustci("--url", coordinator.url, "runners", "list")
    assert code == 0 and listed["total_count"] == 0


async def test_unreachable_coordinator_is_one_line(rustci: Run) -> None:
    code, _, err = await rustci("--url", f"http://127.0.0.1:{free_port()}", "--api-key", API_KEY, "runners", "list")
    assert code == 1
    assert err.startswith("rustci: cannot reach the coordinator")


async def test_malformed_step_is_a_usage_error(connected: CoordinatorHandle) -> None:
    with pytest.raises(SystemExit, match="--step must look like NAME=VALUE"):
        cli.main(["jobs", "submit", "--runner", "r", "--name", "n", "--step", "no-equals-sign"])


async def test_client_side_validation_names_the_field(connected: CoordinatorHandle, rustci: Run) -> None:
    code, _, err = await rustci("jobs", "submit", "--runner", "r", "--name", "n", "--step", "a=")
    assert code == 1
    assert "INVALID_REQUEST" in err and "steps[0].run" in err


async def test_a_bearer_token_instead_of_a_key(
    coordinator: CoordinatorHandle, rustci: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator import keys, tokens

    assert coordinator.app is not None
    viewer = tokens.issue(coordinator.app[keys.CREDENTIALS].jwt_secret, "ci-bot", "viewer", 60)
    runner_id = (await register_runner(coordinator.api, port=free_port()))["runner_id"]
    monkeypatch.setenv("RUSTCI_URL", coordinator.url)
    monkeypatch.setenv("RUSTCI_API_KEY", API_KEY)  # the token wins over the key
    monkeypatch.setenv("RUSTCI_TOKEN", viewer)
    code, listed, _ = await rustci("runners", "list")
    assert code == 0 and [r["id"] for r in listed["runners"]] == [runner_id]
    code, _, err = await rustci("runners", "delete", runner_id)
    assert code == 1 and "AUTHORIZATION_FAILED" in err
    monkeypatch.delenv("RUSTCI_TOKEN")
    code, _, err = await rustci("runners", "get", runner_id, "--token", "eyJ.not.valid")
    assert code == 1 and "AUTHENTICATION_REQUIRED" in err
