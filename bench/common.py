"""Helpers the benchmarks share: real daemons as subprocesses on loopback, readiness polling, statistics, tables.

Everything here talks to 127.0.0.1 only. Daemons are started with ``python -m coordinator`` / ``python -m agent``
(the interpreter running the benchmark, so the venv's), each with its own temporary state directory, and are
stopped by PID: SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
API_KEY = "bench-admin-api-key-0123456789abcdef"
REGISTRATION_KEY = "reg_bench-registration-key-0123456789"

T = TypeVar("T")


class BenchError(Exception):
    """The benchmark could not run (a daemon did not start, a deadline passed, a job failed)."""


# --- ports, polling ---------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; tiny race until the daemon binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def poll_until(probe: Callable[[], Awaitable[T | None]], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something other than None/False; BenchError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


# --- daemons ----------------------------------------------------------------------------------------------


class Daemon:
    """``python -m <module>`` with the given environment, output to a log file, stopped by its PID."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RUSTCI_LOG_FORMAT": "json", **self.env}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                f"{self.module} (pid {self.proc.pid}) exited with code {self.proc.returncode}; log tail:\n"
                + self.log_tail()
            )

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(proc.wait, 5)
        return proc.returncode


@dataclass
class Cluster:
    """One coordinator and one agent, ready: the runner is registered and ``active``."""

    coordinator_url: str
    api_key: str
    runner_id: str
    coordinator: Daemon
    agent: Daemon
    root: Path
    agents: list[Daemon] = field(default_factory=list)
    """Every agent (``agent`` is the first)."""
    runner_ids: list[str] = field(default_factory=list)
    """Their runners, one each (``runner_id`` is the first's)."""

    @property
    def api(self) -> str:
        return f"{self.coordinator_url}/api"

    @property
    def ws_url(self) -> str:
        return self.coordinator_url.replace("http://", "ws://", 1) + "/api/runners/ws"

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


@contextlib.asynccontextmanager
async def cluster(
    log_level: str = "warning",
    keep_state: bool = False,
    ready_timeout: float = 30.0,
    extra_coordinator_env: dict[str, str] | None = None,
    extra_agent_env: dict[str, str] | None = None,
    agents: int = 1,
) -> AsyncIterator[Cluster]:
    """Start a coordinator and ``agents`` agents on free loopback ports; wait until every runner is active; stop
    them all."""
    root = Path(tempfile.mkdtemp(prefix="rustci-bench-"))
    coordinator_state = root / "coordinator"
    coordinator_state.mkdir()
    coordinator_port = free_port()
    url = f"http://{HOST}:{coordinator_port}"
    coordinator = Daemon(
        "coordinator",
        {
            "RUSTCI_STATE_DIR": str(coordinator_state),
            "RUSTCI_LISTEN_HOST": HOST,
            "RUSTCI_LISTEN_PORT": str(coordinator_port),
            "RUSTCI_API_KEY": API_KEY,
            "RUSTCI_REGISTRATION_KEY": REGISTRATION_KEY,
            "RUSTCI_LOG_LEVEL": log_level,
            # A benchmark submits hundreds of jobs a minute to one runner, far past the API's default limits.
            "RUSTCI_RATE_LIMITS_ENABLED": "false",
            **(extra_coordinator_env or {}),
        },
        root / "coordinator.log",
    )
    daemons: list[Daemon] = []
    for n in range(agents):
        agent_state = root / f"agent{n}"
        agent_state.mkdir()
        agent_port = free_port()
        while agent_port == coordinator_port:
            agent_port = free_port()
        daemons.append(
            Daemon(
                "agent",
                {
                    "RUSTCI_STATE_DIR": str(agent_state),
                    "RUSTCI_AGENT_HOST": HOST,
                    "RUSTCI_AGENT_PORT": str(agent_port),
                    "RUSTCI_COORDINATOR_URL": url,
                    "RUSTCI_REGISTRATION_KEY": REGISTRATION_KEY,
                    "RUSTCI_RUNNER_NAME": f"bench-runner-{n}",
                    "RUSTCI_LOG_LEVEL": log_level,
                    **(extra_agent_env or {}),
                },
                root / f"agent{n}.log",
            )
        )
    try:
        coordinator.start()
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def healthy() -> bool:
                coordinator.check_alive()
                try:
                    async with session.get(f"{url}/api/health") as r:
                        return r.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    return False

            await poll_until(healthy, ready_timeout, f"the coordinator at {url} to answer /api/health")
            for agent in daemons:
                agent.start()

            async def active_runners() -> list[str] | None:
                coordinator.check_alive()
                for agent in daemons:
                    agent.check_alive()
                try:
                    async with session.get(f"{url}/api/runners", headers={"X-API-Key": API_KEY}) as r:
                        if r.status != 200:
                            return None
                        body = await r.json()
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    return None
                active = [str(r["id"]) for r in body.get("runners", []) if r.get("status") == "active"]
                return active if len(active) == len(daemons) else None

            runner_ids = await poll_until(active_runners, ready_timeout, "the agents' runners to be active")
        yield Cluster(url, API_KEY, runner_ids[0], coordinator, daemons[0], root, daemons, runner_ids)
    finally:
        # Agents first: they flush their outboxes to a coordinator that is still there.
        await asyncio.gather(*(agent.stop() for agent in daemons))
        await coordinator.stop()
        if keep_state:
            print(f"state and logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


# --- statistics and output --------------------------------------------------------------------------------


@dataclass
class Summary:
    """Latency samples summarised, in milliseconds."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return out


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summarize(seconds: Sequence[float]) -> Summary:
    ms = sorted(s * 1000.0 for s in seconds)
    if not ms:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan, nan)
    return Summary(
        n=len(ms),
        p50=percentile(ms, 50),
        p90=percentile(ms, 90),
        p99=percentile(ms, 99),
        mean=statistics.fmean(ms),
        min=ms[0],
        max=ms[-1],
    )


def table(rows: Sequence[tuple[str, Summary]]) -> str:
    width = max(len(name) for name, _ in rows)
    head = f"{'':<{width}}  {'n':>5}  {'p50 ms':>9}  {'p90 ms':>9}  {'p99 ms':>9}  {'mean ms':>9}"
    lines = [head, "-" * len(head)]
    for name, s in rows:
        lines.append(f"{name:<{width}}  {s.n:>5}  {s.p50:>9.3f}  {s.p90:>9.3f}  {s.p99:>9.3f}  {s.mean:>9.3f}")
    return "\n".join(lines)


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(a) and not math.isnan(b) else math.nan


def host_info() -> dict[str, Any]:
    import platform

    import aiohttp as _aiohttp

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "aiohttp": _aiohttp.__version__,
        "git": git_revision(),
    }


def git_revision() -> str | None:
    """The checkout's commit (``+dirty`` when tracked files differ), or None outside a git checkout."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def busy_host_warning_from(host: dict[str, Any], cpus_busy_threshold: float = 0.5) -> str | None:
    """A warning when other work was loading the host (per ``host_info``): latency figures are then noisy."""
    load = float(host.get("load_average_1m") or 0.0)
    cpus = int(host.get("cpus") or 1)
    if load / cpus > cpus_busy_threshold:
        return f"warning: host load average {load:.2f} on {cpus} CPUs before the run; latency figures will be noisy"
    return None


# --- subprocess baseline ----------------------------------------------------------------------------------


async def spawn_true() -> float:
    """One ``/bin/sh -c true`` the way the native executor starts a step: new session, stdin from /dev/null,
    stdout and stderr piped and read to EOF, then waited for. Returns the wall time in seconds."""
    t0 = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        "true",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    await process.communicate()
    return time.perf_counter() - t0


def main_for(
    name: str,
    args: argparse.Namespace,
    measure: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    render: Callable[[dict[str, Any]], str],
) -> int:
    """A benchmark script's main: measure, then print the report as a table or (``--json``) as JSON."""
    try:
        report = asyncio.run(measure(args))
    except BenchError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=2))
    else:
        print(render(report))
    return 0
