"""A daemon whose log output went away (its reader died) keeps answering, counts what it drops, and stops."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog

from shared import logs
from tests.conftest import API_KEY, REGISTRATION_KEY, CoordinatorHandle, agent_env, wait_http_ok
from tests.helpers import REPO, Api, free_port, registration, submit_job, wait_for


class _Orphan:
    """A daemon subprocess writing its log into a pipe whose reading end this test closes."""

    def __init__(self, module: str, env: dict[str, str]) -> None:
        full = {**os.environ, "RUSTCI_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def lose_output(self) -> None:
        assert self.proc.stdout is not None
        self.proc.stdout.close()  # every later write of the daemon fails with EPIPE

    async def stop_by_sigterm(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)

        async def exited() -> bool:
            return self.proc.poll() is not None

        await wait_for(exited, timeout, what=f"pid {self.proc.pid} to stop on SIGTERM")
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


@pytest.fixture
def orphans() -> Iterator[list[_Orphan]]:
    started: list[_Orphan] = []
    try:
        yield started
    finally:
        for orphan in started:
            orphan.kill()


async def _dropped(url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        text = await r.text()
    match = re.search(r"^rustci_log_lines_dropped_total (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


async def test_a_coordinator_without_log_output_answers_once_counts_the_drops_and_stops(
    tmp_path: Path, orphans: list[_Orphan]
) -> None:
    port = free_port()
    env = {
        "RUSTCI_STATE_DIR": str(tmp_path / "coordinator"),
        "RUSTCI_LISTEN_PORT": str(port),
        "RUSTCI_LISTEN_HOST": "127.0.0.1",
        "RUSTCI_API_KEY": API_KEY,
        "RUSTCI_REGISTRATION_KEY": REGISTRATION_KEY,
        "RUSTCI_LOG_LEVEL": "debug",
    }
    coordinator = _Orphan("coordinator", env)
    orphans.append(coordinator)
    base = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{base}/api/health")
    coordinator.lose_output()
    api = Api(f"{base}/api", API_KEY)
    try:
        # Every call below logs on the coordinator; each must still answer as it would with a log.
        status, runner = await api.post("/runners/register", registration(type="native", host="127.0.0.1"))
        assert status == 201, runner
        runner_id = runner["runner_id"]
        status, answer = await api.post(
            f"/runners/{runner_id}/jobs", {"name": "once", "steps": [{"name": "s", "run": "true"}]}
        )
        assert status == 201, answer
        status, jobs = await api.get(f"/runners/{runner_id}/jobs")
        assert status == 200 and [j["job_id"] for j in jobs["jobs"]] == [answer["job_id"]], jobs
        assert await _dropped(f"{base}/metrics") > 0
    finally:
        await api.close()
    assert await coordinator.stop_by_sigterm() == 0


async def test_an_agent_without_log_output_still_stops_on_sigterm(
    coordinator: CoordinatorHandle, tmp_path: Path, orphans: list[_Orphan]
) -> None:
    port = free_port()
    state = tmp_path / "agent"
    agent = _Orphan("agent", agent_env(state, coordinator.url, port, RUSTCI_LOG_LEVEL="debug"))
    orphans.append(agent)
    await wait_http_ok(f"http://127.0.0.1:{port}/health")
    await wait_for(lambda: _exists(state / "identity.json"), 15, what="the agent to register")
    agent.lose_output()
    # A job makes the agent log (step finished, at debug level): it runs, and the lines are dropped and counted.
    runner_id = json.loads((state / "identity.json").read_text())["runner_id"]
    job_id = await submit_job(coordinator.api, runner_id, "quiet", "echo hi")
    assert (await coordinator.api.wait_job(runner_id, job_id, {"completed", "failed"}))["status"] == "completed"
    await wait_for(lambda: _dropped(f"http://127.0.0.1:{port}/metrics"), 15, what="a dropped log line")
    assert await agent.stop_by_sigterm() == 0


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


def test_a_log_call_into_a_closed_stream_drops_and_counts_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("info", "json")
        before = logs.dropped_lines()
        structlog.get_logger("test").info("nobody reads this", n=1)
        logging.getLogger("aiohttp.server").error("nor this")
        assert logs.dropped_lines() == before + 2
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
        structlog.reset_defaults()
