"""Test helpers: polling with a deadline, free ports, an API client, daemon processes started by PID."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psutil
import yaml

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


async def wait_for(
    probe: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    """A thin async client for the public API: ``await api.get(path)`` → ``(status, json)``."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.session = aiohttp.ClientSession()

    async def request(
        self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None, data: Any = None
    ) -> tuple[int, Any]:
        sent = {"X-API-Key": self.api_key} if self.api_key else {}
        sent.update(headers or {})
        async with self.session.request(method, self.base_url + path, json=json, data=data, headers=sent) as r:
            text = await r.text()
            try:
                import json as _json

                return r.status, _json.loads(text)
            except ValueError:
                return r.status, text

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.request("POST", path, json=json, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.request("PUT", path, json=json, **kw)

    async def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.request("DELETE", path, **kw)

    async def close(self) -> None:
        await self.session.close()

    async def job(self, runner_id: str, job_id: str) -> dict[str, Any]:
        status, body = await self.get(f"/runners/{runner_id}/jobs/{job_id}")
        assert status == 200, body
        return dict(body)

    async def wait_job(self, runner_id: str, job_id: str, statuses: set[str], timeout: float = 20.0) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            job = await self.job(runner_id, job_id)
            return job if job["status"] in statuses else None

        return await wait_for(probe, timeout, what=f"job {job_id} to reach {sorted(statuses)}")

    async def wait_runner_status(self, runner_id: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            code, body = await self.get(f"/runners/{runner_id}")
            return body if code == 200 and body["status"] == status else None

        return await wait_for(probe, timeout, what=f"runner {runner_id} to become {status}")


TERMINAL = {"completed", "failed", "timed_out", "cancelled"}


class DaemonProcess:
    """``python -m coordinator`` or ``python -m agent`` as a real subprocess, stopped by its PID."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        env = {**os.environ, "RUSTCI_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **self.env}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        proc = self.proc
        await wait_for(lambda: _done(proc), timeout, what=f"{self.module} (pid {proc.pid}) to exit")
        return int(proc.returncode)

    async def stop(self, timeout: float = 20.0) -> int | None:
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.signal(signal.SIGTERM)
        try:
            return await self.wait_exit(timeout)
        except AssertionError:
            self.kill()
            return None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def _done(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None


# --- spec-shaped bodies and assertions (registry, errors, jobs tests) -------------------------------------------

RUNNER_ID_PATTERN = r"^runner_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
JOB_ID_PATTERN = r"^job_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
ISO_UTC_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"


def registration(**overrides: Any) -> dict[str, Any]:
    """The register body from the API reference; ``overrides`` replace top-level keys."""
    body: dict[str, Any] = {
        "name": "my-docker-runner",
        "type": "docker",
        "host": "localhost",
        "port": free_port(),
        "capabilities": ["docker", "isolation", "deployment"],
        "metadata": {"os": "linux", "arch": "amd64", "docker_version": "24.0.0", "max_concurrent_jobs": 5},
        "tags": ["production", "docker"],
        "resources": {"cpu_cores": 4, "memory_gb": 8, "disk_gb": 100},
    }
    body.update(overrides)
    return body


async def register_runner(api: Api, **overrides: Any) -> dict[str, Any]:
    """Register through the API (no agent behind it); returns the register answer."""
    status, body = await api.post("/runners/register", registration(**overrides))
    assert status == 201, body
    return dict(body)


def assert_error(status: int, body: Any, http_status: int, code: str, **details: Any) -> dict[str, Any]:
    """The spec's error envelope with ``code``; each of ``details`` must appear in ``error.details``."""
    import re

    assert status == http_status, (status, body)
    assert isinstance(body, dict), body
    assert body["success"] is False, body
    error = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"], body
    assert "Traceback" not in error["message"], body
    assert re.match(ISO_UTC_PATTERN, error["details"]["timestamp"]), body
    for key, value in details.items():
        assert error["details"].get(key) == value, (key, body)
    return dict(error)


# --- finding a job's processes on this host (timeout, cancel and crash tests) ------------------------------------


class ProcessMarker:
    """A number no other process has in its command line, to find a job's processes by with psutil.

    ``marker.sleep(i)`` is the shell command ``sleep <token><i>``: whole seconds (eight digits, below 2**31, so
    busybox's ``sleep`` takes it too), about a year, so it never ends by itself. :meth:`alive` lists the live
    processes whose command line holds one of those numbers: the sleeps (a step's shell runs its script from a file).
    """

    def __init__(self) -> None:
        self.token = str(random.randint(1_000_000, 9_999_999))
        self._pattern = re.compile(rf"(?<![0-9]){self.token}[0-9](?![0-9])")

    def sleep(self, i: int = 0) -> str:
        return f"sleep {self.token}{i}"

    def background(self) -> str:
        """A step that leaves work behind it: a background sleep, a ``nohup`` one and a foreground one."""
        return f"{self.sleep(1)} & nohup {self.sleep(2)} >/dev/null 2>&1 & {self.sleep(3)}"

    def alive(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if self._pattern.search(" ".join(proc.info["cmdline"] or ())):
                found.append(proc)
        return found

    def describe(self) -> list[str]:
        return [f"{p.pid}: {' '.join(p.info['cmdline'] or ())}" for p in self.alive()]

    async def wait_running(self, count: int = 1, timeout: float = 10.0) -> None:
        """Until at least ``count`` processes carry the marker (the step really started them)."""

        async def probe() -> bool:
            return len(self.alive()) >= count

        await wait_for(probe, timeout, what=f"{count} process(es) with marker {self.token}")

    async def assert_gone(self, timeout: float = 2.0) -> None:
        """No process of the job survives (polled briefly: a SIGKILLed process takes a moment to vanish)."""

        async def probe() -> bool:
            return not self.alive()

        try:
            await wait_for(probe, timeout, what=f"processes with marker {self.token} to end")
        except AssertionError:
            raise AssertionError(f"processes of the job survived: {self.describe()}") from None

    def kill(self) -> None:
        """Teardown hygiene: end whatever still carries the marker, by PID."""
        victims = self.alive()
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(victims, timeout=5)


async def submit_job(api: Api, runner_id: str, name: str, *runs: str, **fields: Any) -> str:
    """Submit a job whose steps run ``runs`` in order (steps named ``s0``, ``s1``...); ``fields`` are added as is
    (``steps=[...]`` replaces the generated ones). Returns the job id."""
    body: dict[str, Any] = {"name": name, "steps": [{"name": f"s{i}", "run": run} for i, run in enumerate(runs)]}
    body.update(fields)
    status, answer = await api.post(f"/runners/{runner_id}/jobs", body)
    assert status == 201, answer
    return str(answer["job_id"])


def agent_config_file(path: Path, **settings: Any) -> Path:
    """Write an agent YAML config with ``settings`` (for ``RUSTCI_CONFIG``; the fixture's env still wins)."""
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


async def wait_process_runner(api: Api, proc: DaemonProcess, timeout: float = 20.0) -> str:
    """The runner id of an ``agent_process`` once that process is fully up: it has sent a heartbeat since it was
    started (registration alone does not mean the queue and the saved configuration are loaded) and its channel
    answers calls."""
    started = time.time()
    identity = Path(proc.env["RUSTCI_STATE_DIR"]) / "identity.json"

    async def probe() -> str | None:
        if not proc.alive():
            raise AssertionError(f"agent process exited with {proc.proc.returncode if proc.proc else None}")
        if not identity.exists():
            return None
        runner_id = str(json.loads(identity.read_text())["runner_id"])
        status, body = await api.get(f"/runners/{runner_id}")
        if status != 200 or body["status"] != "active":
            return None
        seen = body["metadata"]["last_seen"]
        if _epoch(seen) <= started:
            return None
        # Its channel is attached: a call that needs the agent itself is answered.
        status, _ = await api.get(f"/runners/{runner_id}/config")
        return runner_id if status == 200 else None

    return await wait_for(probe, timeout, what=f"agent process {proc.pid} to register, connect and send a heartbeat")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- a fake agent on the channel (what the coordinator does when an agent misbehaves) ----------------------------


class SilentChannel:
    """Opens a runner's channel like an agent, says hello, records every frame the coordinator sends and answers
    none of them (``async with SilentChannel(url, runner_id, token) as channel:``)."""

    def __init__(self, coordinator_url: str, runner_id: str, token: str) -> None:
        self.url = f"{coordinator_url}/api/runners/{runner_id}/channel"
        self.token = token
        self.frames: list[dict[str, Any]] = []
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = iter(range(1, 1_000_000))

    async def __aenter__(self) -> SilentChannel:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.url, headers={"Authorization": f"Bearer {self.token}"})
        hello = {"host": "127.0.0.1", "port": 1, "state": "running"}
        await self.ws.send_str(json.dumps({"id": 0, "kind": "hello", "body": hello}))
        welcome = await self.ws.receive_json(timeout=5)
        assert welcome["kind"] == "reply", welcome
        self._reader = asyncio.create_task(self._read(), name="silent-channel:reader")
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(message.data))

    def kinds(self) -> list[str]:
        return [frame["kind"] for frame in self.frames]

    async def heartbeat(self) -> None:
        """A heartbeat (whose reply is recorded like every other frame): a sign of life, and a cue to deliver."""
        assert self.ws is not None
        body = {
            "load": {"cpu_usage": 0, "memory_usage": 0, "disk_usage": 0, "active_jobs": 0},
            "heartbeat_interval": 10,
        }
        await self.ws.send_str(json.dumps({"id": next(self._ids), "kind": "heartbeat", "body": body}))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class DialCounter:
    """A listening socket that counts the connections made to it (``async with DialCounter() as dials:``)."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()

    async def __aenter__(self) -> DialCounter:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def job_output(api: Api, runner_id: str, job_id: str) -> list[str]:
    """The job's stdout/stderr lines as the coordinator's logs API has them so far."""
    status, body = await api.get(f"/runners/{runner_id}/logs?job_id={job_id}&limit=1000")
    assert status == 200, body
    return [e["message"] for e in body["logs"] if e["context"]["stream"] in ("stdout", "stderr")]
