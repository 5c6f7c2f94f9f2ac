"""The ``rustci`` command line as a user runs it: ``python -m rustci ...`` subprocesses against a real
coordinator and agent on loopback (the daemons run in the test's event loop, so they keep serving while the
CLI process runs)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY, CoordinatorHandle, StartAgent
from tests.helpers import REPO, free_port, register_runner, submit_job


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, *argv: str, stdin: bytes | None = None) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rustci",
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
        )
        self.procs.append(proc)
        return proc

    async def __call__(self, *argv: str, stdin: bytes | None = None, timeout: float = 60) -> Result:
        proc = await self.start(*argv, stdin=stdin)
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def rustci(tmp_path: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUSTCI_")}
    env["PYTHONPATH"] = str(REPO)
    env["RUSTCI_CLI_CONFIG"] = str(tmp_path / "cli.yaml")
    (tmp_path / "cli.yaml").write_text("{}\n")
    cli = Cli(env, tmp_path)
    try:
        yield cli
    finally:
        await cli.close()


@pytest.fixture
def connected(coordinator: CoordinatorHandle, rustci: Cli) -> Cli:
    rustci.env["RUSTCI_URL"] = coordinator.url
    rustci.env["RUSTCI_API_KEY"] = API_KEY
    return rustci


def one_line_error(result: Result, *fragments: str) -> str:
    assert result.code != 0, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("rustci: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- output ------------------------------------------------------------------------------------------------


async def test_runners_as_a_table_and_as_json(connected: Cli, coordinator: CoordinatorHandle) -> None:
    runner_id = (await register_runner(coordinator.api, name="table-me", port=free_port(), tags=["cli"]))["runner_id"]
    table = await connected("runners", "list")
    assert table.code == 0, table
    header, *rows = table.out.strip().splitlines()
    assert header.split()[:4] == ["ID", "NAME", "TYPE", "STATUS"]
    assert len(rows) == 1 and rows[0].split()[:4] == [runner_id, "table-me", "docker", "active"]

    as_json = await connected("runners", "list", "-o", "json", "--tags", "cli")
    assert as_json.code == 0 and [r["id"] for r in as_json.json["runners"]] == [runner_id]
    as_yaml = await connected("-o", "yaml", "runners", "get", runner_id)
    assert as_yaml.code == 0 and f"id: {runner_id}" in as_yaml.out

    updated = await connected("runners", "update", runner_id, "--tags", "a,b", "-o", "json")
    assert updated.code == 0 and updated.json["tags"] == ["a", "b"]
    deleted = await connected("runners", "delete", runner_id)
    assert deleted.code == 0
    one_line_error(await connected("runners", "get", runner_id), "RUNNER_NOT_FOUND")


# --- jobs --------------------------------------------------------------------------------------------------


async def test_a_job_file_followed_to_exit_code_zero(connected: Cli, start_agent: StartAgent, tmp_path: Path) -> None:
    runner_id = (await start_agent()).identity().runner_id
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "name: cli-job\n"
        "environment: {MODE: ci}\n"
        "steps:\n"
        "  - {name: build, run: 'echo building; echo line two'}\n"
        "  - {name: test, run: 'test \"$MODE\" = ci && echo tested'}\n"
    )
    result = await connected("jobs", "submit", "-f", str(job_file), "--runner", runner_id, "--wait")
    assert result.code == 0, result
    assert result.out.splitlines() == ["building", "line two", "tested"]
    assert "--- step build" in result.err and "--- step test" in result.err
    assert result.err.index("--- step build") < result.err.index("--- step test")


async def test_a_failing_step_is_the_exit_code_and_stdin_takes_json(connected: Cli, start_agent: StartAgent) -> None:
    runner_id = (await start_agent()).identity().runner_id
    body = {"name": "bad", "steps": [{"name": "ok", "run": "echo fine"}, {"name": "boom", "run": "echo no; exit 7"}]}
    result = await connected(
        "jobs", "submit", "-f", "-", "--runner", runner_id, "--wait", "-o", "json", stdin=json.dumps(body).encode()
    )
    assert result.code == 7, result
    final = json.loads(result.out[result.out.index("{") :])
    assert final["status"] == "failed" and final["exit_code"] == 7
    assert result.out.startswith("fine\nno\n")


async def test_jobs_list_get_and_cancel_by_job_id_alone(
    connected: Cli, start_agent: StartAgent, coordinator: CoordinatorHandle
) -> None:
    runner_id = (await start_agent()).identity().runner_id
    await register_runner(coordinator.api, name="other", port=free_port())  # searched too, and has no such job
    job_id = await submit_job(coordinator.api, runner_id, "sleepy", "sleep 30")
    await coordinator.api.wait_job(runner_id, job_id, {"running"})

    listed = await connected("jobs", "list", "--runner", runner_id)
    assert listed.code == 0 and listed.out.splitlines()[0].split()[:3] == ["JOB", "ID", "NAME"]
    assert job_id in listed.out
    got = await connected("jobs", "get", job_id, "-o", "json")
    assert got.code == 0 and got.json["runner_id"] == runner_id and got.json["status"] == "running"
    cancelled = await connected("jobs", "cancel", job_id)
    assert cancelled.code == 0, cancelled
    final = await coordinator.api.wait_job(runner_id, job_id, {"cancelled"})
    assert final["status"] == "cancelled"
    done = await submit_job(coordinator.api, runner_id, "quick", "true")
    await coordinator.api.wait_job(runner_id, done, {"completed"})
    one_line_error(await connected("jobs", "cancel", done), "JOB_NOT_CANCELLABLE")
    one_line_error(await connected("jobs", "get", "job_missing"), "JOB_NOT_FOUND")


async def test_wait_on_a_cancelled_job_exits_130(
    connected: Cli, start_agent: StartAgent, coordinator: CoordinatorHandle
) -> None:
    runner_id = (await start_agent()).identity().runner_id
    proc = await connected.start(
        *("jobs", "submit", "--runner", runner_id, "--name", "long", "--step", "s=echo started; sleep 30"),
        "--wait",
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert first == b"started\n"  # live: printed while the step still runs
    jobs = (await coordinator.api.get(f"/runners/{runner_id}/jobs"))[1]["jobs"]
    await coordinator.api.post(f"/runners/{runner_id}/jobs/{jobs[0]['job_id']}/cancel")
    assert await asyncio.wait_for(proc.wait(), 30) == 130


# --- logs --------------------------------------------------------------------------------------------------


async def test_logs_page_and_follow_of_a_job_ends_with_it(
    connected: Cli, start_agent: StartAgent, coordinator: CoordinatorHandle
) -> None:
    runner_id = (await start_agent()).identity().runner_id
    done = await submit_job(coordinator.api, runner_id, "done", "echo alpha", "echo beta")
    await coordinator.api.wait_job(runner_id, done, {"completed"})

    page = await connected("logs", runner_id, "--job", done)
    assert page.code == 0 and "alpha" in page.out and "beta" in page.out
    # Following a finished job prints its lines and ends (by job id alone: the runner is found).
    followed = await connected("logs", "--job", done, "-f", timeout=30)
    assert followed.code == 0, followed
    assert followed.out.index("alpha") < followed.out.index("beta")

    running = await submit_job(coordinator.api, runner_id, "slow", "echo one; sleep 1; echo two")
    live = await connected("logs", runner_id, "--job", running, "-f", timeout=30)
    assert live.code == 0 and live.out.index("one") < live.out.index("two")


# --- config and control ------------------------------------------------------------------------------------


async def test_config_get_set_and_stop_start(connected: Cli, start_agent: StartAgent) -> None:
    runner_id = (await start_agent()).identity().runner_id
    changed = await connected("config", "set", runner_id, "max_concurrent_jobs=3", "job_timeout=600")
    assert changed.code == 0, changed
    value = await connected("config", "get", runner_id, "max_concurrent_jobs")
    assert value.code == 0 and value.out.strip() == "3"
    whole = await connected("config", "get", runner_id, "-o", "json")
    assert whole.json["configuration"]["job_timeout"] == 600
    one_line_error(await connected("config", "set", runner_id, "max_concurrent_jobs=zero"), "INVALID_REQUEST")

    status = await connected("runners", "status", runner_id)
    assert status.code == 0 and "CURRENT_LOAD_QUEUED_JOBS" in status.out and "active" in status.out
    health = await connected("runners", "health", runner_id)
    assert health.code == 0 and health.out.splitlines()[2].split() == ["CHECK", "STATUS", "ERROR"]

    stopped = await connected("runners", "stop", runner_id, "-o", "json")
    assert stopped.code == 0 and stopped.json["success"] is True
    listed = await connected("runners", "list", "-o", "json")
    assert listed.json["runners"][0]["status"] == "stopped"
    started = await connected("runners", "start", runner_id)
    assert started.code == 0
    listed = await connected("runners", "list", "-o", "json")
    assert listed.json["runners"][0]["status"] == "active"


async def test_bulk_needs_a_filter_or_all(connected: Cli, coordinator: CoordinatorHandle) -> None:
    await register_runner(coordinator.api, port=free_port(), tags=["fleet"])
    one_line_error(await connected("bulk", "delete"), "needs a filter")
    result = await connected("bulk", "delete", "--tags", "fleet", "-o", "json")
    assert result.code == 0 and result.json["affected_runners"] == 1


# --- errors ------------------------------------------------------------------------------------------------


async def test_every_error_is_one_line(rustci: Cli, coordinator: CoordinatorHandle, tmp_path: Path) -> None:
    one_line_error(
        await rustci("--url", f"http://127.0.0.1:{free_port()}", "runners", "list"), "cannot reach the coordinator"
    )
    one_line_error(await rustci("--url", "localhost:8080", "runners", "list"), "must start with http://")
    one_line_error(await rustci("--url", coordinator.url, "runners", "list"), "AUTHENTICATION_REQUIRED")
    one_line_error(
        await rustci("--url", coordinator.url, "--api-key", "wrong-key-0123456789", "runners", "list"),
        "AUTHENTICATION_REQUIRED",
    )
    rustci.env.update(RUSTCI_URL=coordinator.url, RUSTCI_API_KEY=API_KEY)
    one_line_error(await rustci("jobs", "submit", "--runner", "r", "-f", str(tmp_path / "none.yaml")), "cannot read")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    one_line_error(await rustci("jobs", "submit", "--runner", "r", "-f", str(tmp_path / "bad.yaml")), "not valid")
    (tmp_path / "job.yaml").write_text("name: x\nsteps: [{name: a, run: ''}]\n")
    one_line_error(
        await rustci("jobs", "submit", "--runner", "r", "-f", str(tmp_path / "job.yaml")), "INVALID_REQUEST", "steps"
    )
    one_line_error(await rustci("jobs", "submit", "--runner", "r", "--name", "n", "--step", "no-equals"), "NAME=VALUE")
    one_line_error(await rustci("--ca-file", str(tmp_path / "no-ca.pem"), "runners", "list"), "CA file")
    (tmp_path / "cli.yaml").write_text("colour: blue\n")
    one_line_error(await rustci("runners", "list"), "unknown key 'colour'")


async def test_credentials_from_the_config_file(rustci: Cli, coordinator: CoordinatorHandle, tmp_path: Path) -> None:
    (tmp_path / "cli.yaml").write_text(f"url: {coordinator.url}\napi_key: {API_KEY}\n")
    result = await rustci("runners", "list", "-o", "json")
    assert result.code == 0 and result.json["total_count"] == 0
    # What `rustci local up` leaves in the working directory is picked up when no key is configured.
    (tmp_path / "cli.yaml").write_text(f"url: {coordinator.url}\n")
    key_file = tmp_path / ".rustci" / "coordinator" / "admin-api-key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(API_KEY + "\n")
    assert (await rustci("runners", "list")).code == 0


async def test_version_and_completion(connected: Cli) -> None:
    version = await connected("version", "-o", "json")
    assert version.code == 0 and version.json["client"] == version.json["coordinator"]  # one checkout, both ends
    script = await connected("completion", "bash")
    assert script.code == 0 and "complete -F _rustci rustci" in script.out
    assert '"runners") words="--help list get status health update delete stop restart start"' in script.out


# --- the README ----------------------------------------------------------------------------------------------


def quick_start_commands() -> list[str]:
    """The shell lines of the README's quick start that use the CLI (and what they need), comments dropped."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Quick start") : readme.index("## Development")]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s{2,}#.*$", "", line).strip()
            if line.startswith((".venv/bin/rustci", "printf")):
                commands.append(line)
    return commands


async def test_the_readme_quick_start_runs(connected: Cli, start_agent: StartAgent) -> None:
    runner_id = (await start_agent()).identity().runner_id
    commands = quick_start_commands()
    assert any(" jobs submit " in c for c in commands) and any(" runners list" in c for c in commands)
    env = {**connected.env, "RUNNER": runner_id}
    for command in commands:
        if command.endswith(" -f"):  # follows the runner's log until Ctrl-C: run it bounded, by job instead
            command = command.removesuffix(" -f")
        line = command.replace(".venv/bin/rustci", f"{sys.executable} -m rustci")
        proc = await asyncio.create_subprocess_shell(
            line, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=connected.cwd
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, (command, err.decode())
        if " jobs submit " in command:
            assert out.decode().splitlines() == ["Hello"]
        if command.startswith(".venv/bin/rustci runners list"):
            assert out.decode().split()[:4] == ["ID", "NAME", "TYPE", "STATUS"]


async def test_a_job_routed_by_tags_is_followed_to_its_exit_code(connected: Cli, start_agent: StartAgent) -> None:
    tagged = (await start_agent("tagged", runner={"name": "tagged", "tags": ["linux", "gpu"]})).identity().runner_id
    await start_agent("plain", runner={"name": "plain", "tags": ["linux"]})
    result = await connected(
        "jobs",
        "submit",
        "--tag",
        "linux",
        "--tag",
        "gpu",
        "--name",
        "routed",
        "--step",
        "s=echo routed; exit 3",
        "--wait",
    )
    assert result.code == 3, result  # the failing step's exit code
    assert result.out.splitlines() == ["routed"]
    assert f"submitted to {tagged}" in result.err  # the only runner with both tags
    both = await connected("jobs", "submit", "--runner", tagged, "--tag", "gpu", "--name", "x", "--step", "s=true")
    one_line_error(both, "--runner or --tag")
