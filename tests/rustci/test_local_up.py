"""``rustci local up`` as a real subprocess: ready banner, a working API, clean stop, same identity next time.

Every process is found by PID (the banner prints the children's) and is killed at teardown whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO, Api, free_port, wait_for

STARTUP = 60.0
# The agent may take its shutdown_timeout (configs/agent.yaml) to drain; an idle one stops at once.
SHUTDOWN = 60.0


@dataclass
class Banner:
    api_url: str
    api_key: str
    runner_id: str
    pids: dict[str, int]


@dataclass
class Launch:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    port: int
    children: set[int] = field(default_factory=set)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def remember_children(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.children |= {child.pid for child in psutil.Process(self.proc.pid).children(recursive=True)}

    async def banner(self) -> Banner:
        async def printed() -> Banner | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"rustci local up exited ({self.proc.returncode}):\n{self.stderr()}")
            return parse_banner(self.stdout())

        banner = await wait_for(printed, STARTUP, interval=0.05, what="the ready banner")
        self.children |= set(banner.pids.values())
        return banner

    async def exit_code(self) -> int:
        async def exited() -> bool:
            return self.proc.poll() is not None

        await wait_for(exited, SHUTDOWN, interval=0.05, what=f"rustci local up (pid {self.proc.pid}) to exit")
        return int(self.proc.returncode)

    def kill_all(self) -> None:
        """Teardown: the launcher, then every child it had, by PID."""
        self.remember_children()
        for pid in [self.proc.pid, *self.children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def parse_banner(text: str) -> Banner | None:
    fields = dict(re.findall(r"^  (API URL|Admin API key|Runner id|Processes):\s+(.+)$", text, re.MULTILINE))
    if len(fields) < 4:
        return None
    pids = {name: int(pid) for name, pid in re.findall(r"(\w+) pid (\d+)", fields["Processes"])}
    return Banner(fields["API URL"], fields["Admin API key"], fields["Runner id"], pids)


StartLaunch = Callable[..., Launch]


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[StartLaunch]:
    launches: list[Launch] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUSTCI_")}

    def start(state: Path, port: int, agent_port: int, **extra_env: str) -> Launch:
        n = len(launches)
        out, err = tmp_path / f"up-{n}.out", tmp_path / f"up-{n}.err"
        argv = [sys.executable, "-m", "rustci", "local", "up", "--port", str(port), "--agent-port", str(agent_port)]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [*argv, "--state-dir", str(state)],
                cwd=tmp_path,
                env={**env, **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        launched = Launch(proc, out, err, port)
        launches.append(launched)
        return launched

    try:
        yield start
    finally:
        for launched in launches:
            launched.kill_all()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def check_api(launched: Launch, banner: Banner) -> dict[str, object]:
    """The printed key works on the printed URL and the local runner is the one, active runner."""
    assert banner.api_url == f"http://localhost:{launched.port}/api"
    api = Api(f"http://127.0.0.1:{launched.port}/api", banner.api_key)
    try:
        assert f"  Dashboard:      http://localhost:{launched.port}/  " in launched.stdout()
        async with api.session.get(f"http://127.0.0.1:{launched.port}/") as page:
            assert page.status == 200 and page.content_type == "text/html"
        status, body = await api.get("/runners")
        assert status == 200, body
        assert body["total_count"] == 1
        (runner,) = body["runners"]
        assert runner["id"] == banner.runner_id
        assert runner["status"] == "active"
        status, job = await api.post(
            f"/runners/{banner.runner_id}/jobs", {"name": "hello", "steps": [{"name": "greet", "run": "echo Hello"}]}
        )
        assert status == 201, job
        finished = await api.wait_job(banner.runner_id, job["job_id"], {"completed", "failed", "cancelled"})
        assert finished["status"] == "completed"
        return dict(runner)
    finally:
        await api.close()


async def test_up_then_sigterm_then_up_again_keeps_key_and_runner(launch: StartLaunch, tmp_path: Path) -> None:
    state = tmp_path / "state"
    port, agent_port = free_port(), free_port()

    first = launch(state, port, agent_port)
    banner = await first.banner()
    assert set(banner.pids) == {"coordinator", "agent"}
    assert {c.pid for c in psutil.Process(first.proc.pid).children()} == set(banner.pids.values())
    assert f'curl -H "X-API-Key: {banner.api_key}" http://localhost:{port}/api/runners' in first.stdout()
    await check_api(first, banner)
    # The generated key is the one kept in the coordinator's state directory.
    assert (state / "coordinator" / "admin-api-key").read_text().strip() == banner.api_key

    # The CLI, asked for JSON, answers with the same URL and key.
    cli_env = {**os.environ, "RUSTCI_URL": f"http://127.0.0.1:{port}", "RUSTCI_API_KEY": banner.api_key}
    argv = [sys.executable, "-m", "rustci", "runners", "list", "-o", "json"]
    listed = await asyncio.to_thread(subprocess.run, argv, cwd=REPO, env=cli_env, capture_output=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)["runners"]] == [banner.runner_id]

    first.proc.send_signal(signal.SIGTERM)
    assert await first.exit_code() == 0, first.stderr()
    assert all(gone(pid) for pid in banner.pids.values())
    log = first.stderr()
    # Agent first, then the coordinator; both logs were shown, prefixed.
    assert log.index("stopping the agent") < log.index("stopping the coordinator")
    assert "agent      | " in log and "coordinator| " in log

    second = launch(state, port, agent_port)
    again = await second.banner()
    assert again.api_key == banner.api_key
    assert again.runner_id == banner.runner_id
    assert again.pids != banner.pids
    await check_api(second, again)

    second.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert await second.exit_code() == 0, second.stderr()
    assert all(gone(pid) for pid in again.pids.values())


async def test_an_agent_advertising_an_unreachable_address_is_fully_usable(launch: StartLaunch, tmp_path: Path) -> None:
    """``RUSTCI_ADVERTISE_HOST=127.0.0.9 make run``: nothing listens at the advertised address, as for an agent
    behind NAT; jobs, status, health, configuration and control work at once, over the agent's channel."""
    launched = launch(tmp_path / "state", free_port(), free_port(), RUSTCI_ADVERTISE_HOST="127.0.0.9")
    banner = await launched.banner()
    runner = await check_api(launched, banner)
    assert runner["host"] == "127.0.0.9"
    api = Api(f"http://127.0.0.1:{launched.port}/api", banner.api_key)
    try:
        base = f"/runners/{banner.runner_id}"
        for method, path, body in (
            ("GET", "/status", None),
            ("GET", "/health", None),
            ("GET", "/config", None),
            ("PUT", "/config", {"max_concurrent_jobs": 2}),
            ("POST", "/stop", {"graceful": True, "timeout": 5}),
            ("POST", "/start", None),
        ):
            status, answer = await api.request(method, base + path, json=body)
            assert status == 200, (method, path, answer)
    finally:
        await api.close()
    launched.proc.send_signal(signal.SIGTERM)
    assert await launched.exit_code() == 0, launched.stderr()


async def test_a_dying_child_takes_the_other_down_and_fails(launch: StartLaunch, tmp_path: Path) -> None:
    launched = launch(tmp_path / "state", free_port(), free_port())
    banner = await launched.banner()
    os.kill(banner.pids["agent"], signal.SIGKILL)

    code = await launched.exit_code()
    assert code != 0
    assert f"the agent (pid {banner.pids['agent']}) exited with code -9" in launched.stderr()
    assert gone(banner.pids["coordinator"])


async def test_a_busy_port_is_refused_before_anything_starts(launch: StartLaunch, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launched = launch(tmp_path / "state", port, free_port())
        assert await launched.exit_code() == 2
    assert f"port {port} on 127.0.0.1 is already in use" in launched.stderr()
    assert not (tmp_path / "state").exists()


async def test_a_stop_during_startup_ends_cleanly(launch: StartLaunch, tmp_path: Path) -> None:
    launched = launch(tmp_path / "state", free_port(), free_port())

    async def coordinator_logging() -> bool:
        launched.remember_children()
        return "coordinator| " in launched.stderr()

    await wait_for(coordinator_logging, STARTUP, interval=0.02, what="the coordinator's first log line")
    launched.proc.send_signal(signal.SIGTERM)
    assert await launched.exit_code() == 0, launched.stderr()
    assert launched.children and all(gone(pid) for pid in launched.children)
