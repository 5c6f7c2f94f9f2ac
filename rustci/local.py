"""``rustci local up``: a coordinator and one native agent on this machine, in the foreground.

Both run as children of this interpreter (``python -m coordinator``, ``python -m agent``), configured by
``configs/coordinator.yaml`` and ``configs/agent.yaml`` with environment overrides for the options given, so
the launcher sees exactly the settings the children load. Their logs go to stderr, each line prefixed with
the child's name; the ready banner (API URL, admin key, runner id, PIDs) goes to stdout.

Ctrl-C or SIGTERM stops the agent first (it lets running jobs finish within its ``shutdown_timeout``; a
second Ctrl-C makes it cancel them), then the coordinator, each within a bound and then SIGKILLed by PID.
The children run in their own process group, so a Ctrl-C on the terminal reaches only this launcher and the
stop order holds. If either child dies, the other is stopped and the exit status is non-zero. If the launcher
itself dies, by any signal (SIGKILL included), each child sees its lifeline pipe close (``shared.lifeline``)
and stops as on SIGTERM, draining its work, so nothing is left running or holding the ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import requests
from pydantic import BaseModel

from agent import config as agent_config
from coordinator import config as coordinator_config
from rustci.client import RustCIClient
from shared import lifeline
from shared.config import ConfigError, load_settings
from shared.errors import ApiError
from shared.timeutil import parse_iso

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Variables both daemons read with different meanings: each child gets its own value or none.
NOT_INHERITED = ("RUSTCI_STATE_DIR", "RUSTCI_CONFIG")
COORDINATOR_STOP_BOUND = 15.0  # its own graceful shutdown is bounded at 10 s
POLL_INTERVAL = 0.05
PROBE_TIMEOUT = 2.0


class LaunchError(Exception):
    """The local fleet could not start or stopped on its own; ``str()`` is the message for the user."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Options:
    port: int | None = None
    """Coordinator API port; default from the coordinator config."""
    agent_port: int | None = None
    """Agent API port; default from the agent config."""
    state_dir: Path | None = None
    """Root of both state directories (``<dir>/coordinator``, ``<dir>/agent``); default from the configs."""
    host: str | None = None
    """Interface the coordinator binds; default from the coordinator config. The agent keeps its own."""
    startup_timeout: float = 60.0
    """Bound on each startup phase: the coordinator answering, the agent's runner becoming active."""


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _connect_host(bind_host: str) -> str:
    """Where to reach a server that binds ``bind_host`` from this machine."""
    if bind_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind_host == "::":
        return "::1"
    return bind_host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _settings(model: type[M], file_name: str, overrides: Mapping[str, str], env: Mapping[str, str]) -> M:
    """A daemon's settings exactly as the child will read them: its example config plus ``env``."""
    path = CONFIG_DIR / file_name
    try:
        return load_settings(model, path if path.is_file() else None, overrides, env)
    except ConfigError as e:
        raise LaunchError(str(e), exit_code=2) from e


def _base_url(bind_host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://{_url_host(_connect_host(bind_host))}:{port}"


@dataclass
class Plan:
    """What to start and how: the two children's command lines and environments, and their effective settings."""

    coordinator: coordinator_config.CoordinatorConfig
    agent: agent_config.AgentConfig
    coordinator_args: list[str]
    agent_args: list[str]
    coordinator_env: dict[str, str]
    agent_env: dict[str, str]

    @property
    def scheme(self) -> str:
        """``https`` when the coordinator is given a certificate (``RUSTCI_TLS_CERT``/``RUSTCI_TLS_KEY``)."""
        return "https" if self.coordinator.tls.enabled else "http"

    @property
    def coordinator_url(self) -> str:
        return _base_url(self.coordinator.listen.host, self.coordinator.listen.port, self.scheme)

    @property
    def public_api_url(self) -> str:
        host = _connect_host(self.coordinator.listen.host)
        shown = "localhost" if _is_loopback(host) else _url_host(host)
        return f"{self.scheme}://{shown}:{self.coordinator.listen.port}/api"

    @property
    def dashboard_url(self) -> str:
        return self.public_api_url.removesuffix("/api") + "/"

    @property
    def agent_health_url(self) -> str:
        return _base_url(self.agent.listen.host, self.agent.listen.port) + "/health"


def _daemon_args(module: str, config_file: Path) -> list[str]:
    args = [sys.executable, "-m", module]
    return [*args, "-c", str(config_file)] if config_file.is_file() else args


def make_plan(options: Options, environ: Mapping[str, str]) -> Plan:
    """Build both children's environments and load their settings exactly as the children will."""
    inherited = {k: v for k, v in environ.items() if k not in NOT_INHERITED}
    inherited.setdefault("RUSTCI_LOG_FORMAT", "console")
    inherited["PYTHONUNBUFFERED"] = "1"

    coordinator_env = dict(inherited)
    if options.port is not None:
        coordinator_env["RUSTCI_LISTEN_PORT"] = str(options.port)
    if options.host:
        coordinator_env["RUSTCI_LISTEN_HOST"] = options.host
    if options.state_dir is not None:
        coordinator_env["RUSTCI_STATE_DIR"] = str(options.state_dir / "coordinator")
    coordinator = _settings(
        coordinator_config.CoordinatorConfig, "coordinator.yaml", coordinator_config.ENV_OVERRIDES, coordinator_env
    )
    if coordinator.listen.port == 0:
        raise LaunchError("the coordinator needs a fixed port here: pass --port", exit_code=2)

    agent_env = dict(inherited)
    scheme = "https" if coordinator.tls.enabled else "http"  # the agent verifies it with RUSTCI_CA_FILE
    agent_env["RUSTCI_COORDINATOR_URL"] = _base_url(coordinator.listen.host, coordinator.listen.port, scheme)
    if options.agent_port is not None:
        agent_env["RUSTCI_AGENT_PORT"] = str(options.agent_port)
    if options.state_dir is not None:
        agent_env["RUSTCI_STATE_DIR"] = str(options.state_dir / "agent")
    agent = _settings(agent_config.AgentConfig, "agent.yaml", agent_config.ENV_OVERRIDES, agent_env)
    if agent.listen.port == 0:
        raise LaunchError("the agent needs a fixed port here: pass --agent-port", exit_code=2)
    if coordinator.tls.enabled and agent.coordinator.ca_file is None and not agent.coordinator.insecure_skip_tls_verify:
        raise LaunchError(
            "the coordinator serves TLS (RUSTCI_TLS_CERT): set RUSTCI_CA_FILE to the CA that signed its certificate,"
            " so the local agent can verify it",
            exit_code=2,
        )

    return Plan(
        coordinator=coordinator,
        agent=agent,
        coordinator_args=_daemon_args("coordinator", CONFIG_DIR / "coordinator.yaml"),
        agent_args=_daemon_args("agent", CONFIG_DIR / "agent.yaml"),
        coordinator_env=coordinator_env,
        agent_env=agent_env,
    )


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


def check_ports(plan: Plan) -> None:
    coordinator, agent = plan.coordinator.listen, plan.agent.listen
    if coordinator.port == agent.port:
        raise LaunchError(f"the coordinator and the agent cannot both use port {agent.port}", exit_code=2)
    for name, listen, flag in (("coordinator", coordinator, "--port"), ("agent", agent, "--agent-port")):
        if not _port_free(listen.host, listen.port):
            raise LaunchError(
                f"port {listen.port} on {listen.host} is already in use (the {name}'s; choose another with {flag})",
                exit_code=2,
            )


def _read_secret(configured: str | None, path: Path) -> str:
    """The configured secret, else the one the coordinator kept in its state directory."""
    if configured:
        return configured
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise LaunchError(f"cannot read {path}: {e.strerror or e}") from e


class Child:
    """One daemon process: its log pump (prefixed lines to ``log_out``) and a task that ends when it exits."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_out: TextIO, lifeline: int) -> None:
        self.name = name
        self.proc = proc
        self.lifeline = lifeline  # the pipe's writing end: open for as long as this launcher lives
        self.pump = asyncio.create_task(self._pump(log_out), name=f"{name}-log")
        self.exited = asyncio.create_task(proc.wait(), name=f"{name}-exit")

    @classmethod
    async def start(cls, name: str, args: list[str], env: dict[str, str], log_out: TextIO) -> Child:
        read_end, write_end = lifeline.child_end()
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                env={**env, lifeline.ENV: str(read_end)},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                process_group=0,  # out of the terminal's foreground group: Ctrl-C reaches the launcher only
                pass_fds=(read_end,),
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        return cls(name, proc, log_out, write_end)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def _pump(self, out: TextIO) -> None:
        assert self.proc.stdout is not None
        prefix = f"{self.name:<11}| "
        pending = b""
        while chunk := await self.proc.stdout.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            out.write("".join(f"{prefix}{line.decode(errors='replace')}\n" for line in lines))
            out.flush()
        if pending:
            out.write(f"{prefix}{pending.decode(errors='replace')}\n")
            out.flush()

    def signal(self, signum: signal.Signals) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    async def stop(self, bound: float, log_out: TextIO) -> int:
        """SIGTERM, wait up to ``bound`` seconds, then SIGKILL; the exit code."""
        self.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(bound):
                await asyncio.shield(self.exited)
        except TimeoutError:
            print(
                f"rustci local up: the {self.name} (pid {self.pid}) did not stop within {bound:g}s; killing it",
                file=log_out,
            )
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.exited
        # The last lines it printed; bounded, in case a grandchild still holds the pipe open.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.shield(self.pump)
        self.pump.cancel()
        self.close_lifeline()
        return self.exited.result()

    def close_lifeline(self) -> None:
        """Once the child has exited (closing it earlier would tell the child to stop a second time)."""
        if self.lifeline >= 0:
            with contextlib.suppress(OSError):
                os.close(self.lifeline)
            self.lifeline = -1


@dataclass
class Launcher:
    plan: Plan
    out: TextIO = field(default_factory=lambda: sys.stdout)
    log_out: TextIO = field(default_factory=lambda: sys.stderr)
    children: list[Child] = field(default_factory=list)
    startup_timeout: float = 60.0
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    signals_seen: int = 0
    last_problem: str = ""
    agent_started: float = 0.0

    def __post_init__(self) -> None:
        self.client = RustCIClient(
            self.plan.coordinator_url, timeout=PROBE_TIMEOUT, ca_file=self.plan.agent_env.get("RUSTCI_CA_FILE")
        )
        self.client.session.trust_env = False  # loopback: never through an HTTP proxy from the environment

    # --- signals -------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        self.signals_seen += 1
        if self.signals_seen == 1:
            print(f"\nrustci local up: {signal.Signals(signum).name}: stopping", file=self.log_out, flush=True)
            self.stop_requested.set()
            return
        agent = self._child("agent")
        if agent is not None and agent.alive:
            print("rustci local up: stopping again: the agent cancels its running jobs now", file=self.log_out)
            agent.signal(signal.SIGTERM)

    def _child(self, name: str) -> Child | None:
        return next((child for child in self.children if child.name == name), None)

    # --- main sequence -------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        for signum in handled:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self._up()
            return 0
        except LaunchError as e:
            print(f"rustci local up: {e}", file=self.log_out, flush=True)
            return e.exit_code
        finally:
            await self._stop_all()
            for signum in handled:
                loop.remove_signal_handler(signum)
            self.client.close()

    async def _up(self) -> None:
        plan = self.plan
        # 1. The coordinator, until its liveness probe answers.
        await self._start("coordinator", plan.coordinator_args, plan.coordinator_env)
        healthy = self._poll(self._coordinator_healthy)
        if not await self._watch(healthy, "the coordinator to answer /api/health", self.startup_timeout):
            return
        # 2. Its keys: configured, or generated into its state directory on first start and reused after.
        state = plan.coordinator.state_dir
        api_key = _read_secret(plan.coordinator.auth.api_key, state / "admin-api-key")
        registration_key = _read_secret(plan.coordinator.auth.registration_key, state / "registration-key")
        self.client.session.headers["X-API-Key"] = api_key
        plan.agent_env["RUSTCI_REGISTRATION_KEY"] = registration_key
        # 3. The agent, until its runner shows as active on the coordinator.
        self.agent_started = time.time()
        await self._start("agent", plan.agent_args, plan.agent_env)
        ready = self._poll(self._runner_ready)
        runner = await self._watch(ready, "the local agent's runner to become active", self.startup_timeout)
        if not runner:
            return
        self._announce(api_key, runner)
        # 4. Until Ctrl-C / SIGTERM, or until a child dies.
        await self._watch(None, "a stop signal", timeout=None)

    async def _start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        child = await Child.start(name, args, env, self.log_out)
        self.children.append(child)

    async def _watch(self, work: Coroutine[Any, Any, T] | None, what: str, timeout: float | None) -> T | None:
        """Await ``work`` (or just wait) while watching the children and the stop flag.

        Returns ``work``'s result, or ``None`` once a stop was requested; a child's exit or the deadline
        raises :class:`LaunchError`.
        """
        stop = asyncio.create_task(self.stop_requested.wait())
        task = asyncio.create_task(work) if work is not None else None
        watched: list[asyncio.Task[Any]] = [stop, *(child.exited for child in self.children)]
        if task is not None:
            watched.append(task)
        try:
            async with asyncio.timeout(timeout):
                done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            detail = f" (last: {self.last_problem})" if self.last_problem else ""
            raise LaunchError(f"gave up after {timeout:g}s waiting for {what}{detail}") from None
        finally:
            unfinished = [t for t in (stop, task) if t is not None and not t.done()]
            for pending in unfinished:
                pending.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self.stop_requested.is_set():
            return None
        for child in self.children:
            if child.exited.done():
                raise LaunchError(
                    f"the {child.name} (pid {child.pid}) exited with code {child.exited.result()}; see its log above"
                )
        assert task is not None and task in done
        return task.result()

    # --- readiness probes (blocking calls, run in a thread) ------------------------------------------------

    async def _poll(self, probe: Callable[[], T | None]) -> T:
        while True:
            result = await asyncio.to_thread(probe)
            if result is not None:
                return result
            await asyncio.sleep(POLL_INTERVAL)

    def _coordinator_healthy(self) -> bool | None:
        try:
            self.client.health()
            return True
        except (requests.RequestException, ApiError) as e:
            self.last_problem = f"GET {self.client.api_url}/health: {e}"
            return None

    def _runner_ready(self) -> dict[str, Any] | None:
        """The local runner once this agent has reported to the coordinator: ``active``, or ``stopped`` when it
        was stopped through the API before (a stopped runner stays stopped across restarts)."""
        try:
            # The agent says its runner id once it has registered (or re-announced the one it keeps).
            answer = self.client.session.get(self.plan.agent_health_url, timeout=PROBE_TIMEOUT).json()
            runner_id = answer.get("runner_id") if isinstance(answer, dict) else None
            if not runner_id:
                self.last_problem = "the agent has not registered yet"
                return None
            runner = self.client.get_runner(str(runner_id))
            # A status recorded before this agent started may be stale: wait for this agent's own report.
            last_seen = parse_iso(str(runner.get("metadata", {}).get("last_seen"))).timestamp()
        except (requests.RequestException, ValueError, ApiError) as e:
            self.last_problem = str(e)
            return None
        status = runner.get("status")
        if last_seen < self.agent_started or status not in ("active", "stopped"):
            self.last_problem = f"runner {runner_id} is {status}"
            return None
        return runner

    # --- banner and shutdown -------------------------------------------------------------------------------

    def _announce(self, api_key: str, runner: dict[str, Any]) -> None:
        url = self.plan.public_api_url
        runner_id = runner["id"]
        pids = ", ".join(f"{child.name} pid {child.pid}" for child in self.children)
        job = '{"name": "hello", "steps": [{"name": "greet", "run": "echo Hello"}]}'
        base = url.removesuffix("/api")
        url_flag = "" if base == "http://localhost:8080" else f" --url {base}"
        ca_file = self.plan.agent_env.get("RUSTCI_CA_FILE")
        curl = f"curl --cacert {ca_file}" if self.plan.scheme == "https" and ca_file else "curl"
        if self.plan.scheme == "https" and ca_file:
            url_flag += f" --ca-file {ca_file}"
        lines = [
            "",
            "RustCI Runner is up: a coordinator and one local agent. Press Ctrl-C to stop both.",
            "",
            f"  Dashboard:      {self.plan.dashboard_url}  (sign in with the admin API key)",
            f"  API URL:        {url}",
            f"  Admin API key:  {api_key}",
            f"  Runner id:      {runner_id}",
            f"  Runner status:  {runner['status']}",
            f"  Processes:      {pids}",
            f"  State:          {self.plan.coordinator.state_dir}, {self.plan.agent.state_dir}",
            "",
            "Try (the CLI finds the key in .rustci/ when run from this directory):",
            f"  .venv/bin/rustci{url_flag} runners list",
            f"  .venv/bin/rustci{url_flag} jobs submit --runner {runner_id} --name hello \\",
            "       --step greet='echo Hello' --wait",
            "or with curl:",
            f'  {curl} -H "X-API-Key: {api_key}" {url}/runners',
            f'  {curl} -X POST -H "X-API-Key: {api_key}" -H "Content-Type: application/json" \\',
            f"       -d '{job}' {url}/runners/{runner_id}/jobs",
            "",
        ]
        if runner["status"] == "stopped":
            lines += [
                "The runner was stopped through the API and stays stopped until started:",
                f'  {curl} -X POST -H "X-API-Key: {api_key}" {url}/runners/{runner_id}/start',
                "",
            ]
        print("\n".join(lines), file=self.out, flush=True)

    async def _stop_all(self) -> None:
        """Agent first (it drains its jobs and ships their last reports to the coordinator), then the coordinator."""
        agent_settings = self.plan.agent
        bounds = {
            "agent": agent_settings.shutdown_timeout + agent_settings.kill_grace_period + 10.0,
            "coordinator": COORDINATOR_STOP_BOUND,
        }
        for child in reversed(self.children):
            if child.alive:
                print(f"rustci local up: stopping the {child.name} (pid {child.pid})", file=self.log_out, flush=True)
            await child.stop(bounds[child.name], self.log_out)


async def up(options: Options, out: TextIO | None = None, log_out: TextIO | None = None) -> int:
    """Run the local fleet until stopped; the process exit status."""
    log_out = log_out or sys.stderr
    try:
        plan = make_plan(options, os.environ)
        check_ports(plan)
    except LaunchError as e:
        print(f"rustci local up: {e}", file=log_out)
        return e.exit_code
    launcher = Launcher(plan, out=out or sys.stdout, log_out=log_out, startup_timeout=options.startup_timeout)
    started = time.monotonic()
    code = await launcher.run()
    if code == 0:
        print(f"rustci local up: stopped after {time.monotonic() - started:.0f}s", file=log_out)
    return code
