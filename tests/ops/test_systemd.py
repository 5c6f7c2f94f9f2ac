"""``Type=notify`` for real: both daemons as subprocesses, talking to an ``AF_UNIX`` datagram socket that stands
in for systemd's ``NOTIFY_SOCKET``; and ``systemd-analyze verify`` on both units."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from shared.systemd import Notifier, watchdog_interval
from tests.conftest import API_KEY, CoordinatorHandle, StartAgentProcess
from tests.helpers import REPO, free_port, wait_for
from tests.ops.daemons import coordinator_daemon

WATCHDOG_USEC = 400_000  # keep-alives every 0.2 s


class NotifySocket:
    """A bound datagram socket collecting ``(arrival time, {KEY: VALUE})`` messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    async def wait(self, match: Callable[[dict[str, str]], bool], timeout: float = 20.0) -> dict[str, str]:
        """The first message (from the start) that matches, waiting for it with a deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._drain()
            for _, fields in self.messages:
                if match(fields):
                    return fields
            if loop.time() > deadline:
                raise AssertionError(f"no matching notification in {timeout}s; got {self.messages}")
            await asyncio.sleep(0.02)

    def since(self, index: int) -> list[tuple[float, dict[str, str]]]:
        self._drain()
        return self.messages[index:]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def notify_env(sock: NotifySocket) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}


async def assert_watchdog_pace(sock: NotifySocket) -> None:
    """Keep-alives keep coming at half WATCHDOG_USEC (never a gap near the full interval)."""
    start = len(sock.since(0))

    def beats() -> list[float]:
        return [at for at, fields in sock.since(start) if fields.get("WATCHDOG") == "1"]

    async def enough() -> bool:
        return len(beats()) >= 6

    await wait_for(enough, timeout=10, what="six keep-alives")
    gaps = [b - a for a, b in itertools.pairwise(beats())]
    assert max(gaps) < WATCHDOG_USEC / 1_000_000 * 0.9, gaps


async def test_coordinator_ready_status_watchdog_reload_stopping(notify_socket: NotifySocket, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "coordinator.yaml"
    config.write_text("log: {level: info}\nrate_limits: {bulk_per_minute: 5}\n")
    async with coordinator_daemon(tmp_path, port, RUSTCI_CONFIG=str(config), **notify_env(notify_socket)) as proc:
        ready = await notify_socket.wait(lambda f: f.get("READY") == "1")
        # READY means the API listens: the first request after it is answered.
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/api/health") as r:
            assert r.status == 200
        assert ready["STATUS"].startswith("serving on 127.0.0.1:")
        await notify_socket.wait(lambda f: f.get("STATUS") == "starting")
        await assert_watchdog_pace(notify_socket)

        # systemctl reload: RELOADING=1, then READY=1 again, and the new limit applies.
        mark = len(notify_socket.since(0))
        config.write_text("log: {level: debug}\nrate_limits: {bulk_per_minute: 1}\n")
        proc.signal(signal.SIGHUP)
        await notify_socket.wait(lambda f: f.get("RELOADING") == "1")
        await notify_socket.wait(lambda f: f.get("READY") == "1" and len(notify_socket.messages) > mark + 1)
        async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as session:
            body = {"operation": "start", "filters": {}}
            async with session.post(f"http://127.0.0.1:{port}/api/runners/bulk", json=body) as r:
                assert r.status == 200 and r.headers["X-RateLimit-Limit"] == "1"
        assert "configuration reloaded" in proc.log()

        proc.signal(signal.SIGTERM)
        assert await proc.wait_exit() == 0
        await notify_socket.wait(lambda f: f.get("STOPPING") == "1")


async def test_agent_ready_only_once_registered(
    notify_socket: NotifySocket, coordinator: CoordinatorHandle, agent_process: StartAgentProcess
) -> None:
    proc = agent_process(coordinator.url, **notify_env(notify_socket))
    ready = await notify_socket.wait(lambda f: f.get("READY") == "1")
    # At READY the runner is registered and its API listens.
    status, listed = await coordinator.api.get("/runners")
    assert status == 200 and [r["name"] for r in listed["runners"]] == ["process-runner"]
    assert ready["STATUS"] == "running: 0 job(s) running, 0 queued"
    await notify_socket.wait(lambda f: f.get("STATUS", "").startswith("starting: registering"))
    await assert_watchdog_pace(notify_socket)
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit() == 0
    stopping = await notify_socket.wait(lambda f: f.get("STOPPING") == "1")
    assert stopping["STATUS"].startswith("stopping:")


async def test_without_notify_socket_nothing_is_sent_and_abstract_sockets_work() -> None:
    assert not Notifier.from_environment({}).notify(ready="1")
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # meant for another
    name = f"rustci-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        notifier = Notifier("@" + name)
        notifier.ready("up")
        assert server.recv(4096) == b"READY=1\nSTATUS=up"
        notifier.close()
    gone = Notifier("/nonexistent/notify.sock")
    assert gone.notify(status="x") is False  # never raises
    gone.close()


# --- the units -----------------------------------------------------------------------------------------------


def verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # The units point at /opt/rustci/venv; verify them against this checkout's venv, which has the same scripts.
    venv_bin = Path(shutil.which("rustci-coordinator") or REPO / ".venv" / "bin" / "rustci-coordinator").parent
    units = []
    for name in ("rustci-coordinator.service", "rustci-agent.service"):
        text = (REPO / "systemd" / name).read_text().replace("/opt/rustci/venv/bin/", f"{venv_bin}/")
        assert "Type=notify" in text and "WatchdogSec=" in text
        units.append(tmp_path / name)
        units[-1].write_text(text)
    result = verify(units)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    assert "ExecReload=" in units[0].read_text()
    # The check does catch a broken unit.
    units[0].write_text(units[0].read_text().replace("Type=notify", "Type=notifyy"))
    broken = verify([units[0]])
    assert "notifyy" in broken.stderr
