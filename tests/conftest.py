"""Shared fixtures: real coordinators and agents on 127.0.0.1 ephemeral ports, real SQLite files.

- ``coordinator``: an in-process coordinator (aiohttp app) with its own state dir; ``coordinator.api`` is an
  authenticated client; ``coordinator.restart()`` restarts it on the same database and port.
- ``start_agent``: starts in-process agents registered with that coordinator; stopped at teardown.
- ``agent_process``: starts ``python -m agent`` subprocesses (for SIGKILL and restart tests), by PID.
- ``coordinator_process``: a ``python -m coordinator`` subprocess, for tests where the coordinator must die.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.config import AgentConfig
from agent.daemon import Agent
from coordinator import keys, tls
from coordinator.app import make_app
from coordinator.config import CoordinatorConfig
from tests import postgres_support
from tests.helpers import Api, DaemonProcess, ProcessMarker, free_port, wait_for
from tests.store_support import ENGINES, StoreDatabase

API_KEY = "test-admin-key-0123456789abcdef"
REGISTRATION_KEY = "test-registration-key-0123456789"


@dataclass
class CoordinatorHandle:
    config: CoordinatorConfig
    port: int = 0
    runner: web.AppRunner | None = None
    app: web.Application | None = None
    apis: list[Api] = field(default_factory=list)
    admin: Api | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls.enabled else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    async def start(self) -> None:
        self.config.listen.port = self.port
        self.app = make_app(self.config)
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=tls.server_context(self.config.tls))
        await site.start()
        if not self.port:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def client(self, api_key: str | None = API_KEY) -> Api:
        api = Api(self.api_url, api_key)
        self.apis.append(api)
        return api

    @property
    def api(self) -> Api:
        """The admin client (created on first use; other clients made with ``client()`` never take its place)."""
        if self.admin is None:
            self.admin = self.client()
        return self.admin

    @property
    def store(self) -> Any:
        assert self.app is not None
        return self.app[keys.STORE]


def coordinator_config(state_dir: Path, **overrides: Any) -> CoordinatorConfig:
    data: dict[str, Any] = {
        "state_dir": str(state_dir),
        "listen": {"host": "127.0.0.1", "port": 0},
        "auth": {"api_key": API_KEY, "registration_key": REGISTRATION_KEY},
        "runners": {"liveness_check_interval": 0.05, "default_heartbeat_interval": 10},
        "agents": {"request_timeout": 2.0, "connect_timeout": 1.0},
        # Tests register and submit far faster than the API's per-minute limits; the limits have their own tests.
        "rate_limits": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return CoordinatorConfig.model_validate(data)


@contextlib.asynccontextmanager
async def running_coordinator(config: CoordinatorConfig) -> AsyncIterator[CoordinatorHandle]:
    """An in-process coordinator on ``config``, stopped with its clients however the block ends."""
    handle = CoordinatorHandle(config)
    await handle.start()
    try:
        yield handle
    finally:
        for api in handle.apis:
            await api.close()
        await handle.stop()


ONLY_ON = {"sqlite_only": "sqlite", "postgresql_only": "postgresql"}
"""Markers for a test parametrised over both engines that means something on one of them alone."""
ENGINE_PARAMETERS = ("database_engine", "store_database")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: reads the SQLite database directly; not run on PostgreSQL")
    config.addinivalue_line(
        "markers", "postgresql_only: about several coordinators sharing one database; not run on SQLite"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out, when collecting (not as a skip), the engine a test marked for the other one would run on."""
    kept, left_out = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        engine = next((params[name] for name in ENGINE_PARAMETERS if name in params), None)
        wanted = [ONLY_ON[m.name] for m in item.iter_markers() if m.name in ONLY_ON]
        (left_out if engine is not None and wanted and engine not in wanted else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


@pytest.fixture
def database_engine() -> str:
    """The engine the ``coordinator`` fixture stores in: SQLite; ``tests/coordinator/conftest.py`` parametrises it
    over both engines for the API suite."""
    return "sqlite"


@pytest.fixture
def coordinator_database(request: pytest.FixtureRequest, database_engine: str) -> str | None:
    """The ``database`` setting for ``database_engine``: ``None`` (the state dir's SQLite file) or a fresh
    PostgreSQL database."""
    if database_engine == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return None


@pytest.fixture
async def coordinator(tmp_path: Path, coordinator_database: str | None) -> AsyncIterator[CoordinatorHandle]:
    overrides = {"database": coordinator_database} if coordinator_database else {}
    async with running_coordinator(coordinator_config(tmp_path / "coordinator", **overrides)) as handle:
        yield handle


@pytest.fixture(params=ENGINES)
async def store_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreDatabase]:
    """One store database on each engine (``tests/store_support.py``); its stores are closed at teardown."""
    if request.param == "postgresql":
        database = StoreDatabase("postgresql", str(request.getfixturevalue("postgres_url")))
    else:
        database = StoreDatabase("sqlite", str(tmp_path / "store.db"))
    try:
        yield database
    finally:
        await database.close()


def agent_config(state_dir: Path, coordinator_url: str, **overrides: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "coordinator": {"url": coordinator_url, "registration_key": REGISTRATION_KEY, "request_timeout": 5},
        "runner": {"name": "test-runner", "type": "native", "tags": ["test"], "capabilities": ["shell"]},
        "listen": {"host": "127.0.0.1", "port": 0},
        "state_dir": str(state_dir),
        "heartbeat_interval": 0.2,
        "kill_grace_period": 2,
        "shutdown_timeout": 5,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return AgentConfig.model_validate(data)


StartAgent = Callable[..., Awaitable[Agent]]


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
async def start_agent(tmp_path: Path, coordinator: CoordinatorHandle) -> AsyncIterator[StartAgent]:
    """``agent = await start_agent(name="a", max_concurrent_jobs=2)``: an in-process agent, registered, its
    channel to the coordinator open (``connected=False``: do not wait for that)."""
    agents: list[Agent] = []

    async def start(state_name: str = "agent", connected: bool = True, **overrides: Any) -> Agent:
        config = agent_config(tmp_path / state_name, coordinator.url, **overrides)
        agent = Agent(config)
        agents.append(agent)
        await agent.start()
        if connected:  # its channel is open: the coordinator can reach it
            await wait_for(lambda: _true(agent.channel.connected.is_set()), 10, what="the agent's channel to open")
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            if not agent.stopped.is_set():
                await agent.stop(timeout=2)


def agent_env(state_dir: Path, coordinator_url: str, port: int, **extra: str) -> dict[str, str]:
    return {
        "RUSTCI_COORDINATOR_URL": coordinator_url,
        "RUSTCI_REGISTRATION_KEY": REGISTRATION_KEY,
        "RUSTCI_STATE_DIR": str(state_dir),
        "RUSTCI_AGENT_PORT": str(port),
        "RUSTCI_AGENT_HOST": "127.0.0.1",
        "RUSTCI_HEARTBEAT_INTERVAL": "0.2",
        "RUSTCI_RUNNER_NAME": "process-runner",
        **extra,
    }


StartAgentProcess = Callable[..., DaemonProcess]


@pytest.fixture
async def agent_process(tmp_path: Path) -> AsyncIterator[StartAgentProcess]:
    """``proc = agent_process(coordinator_url, state_name="a")``: a real ``python -m agent``; killed at teardown.

    The same ``state_name`` and ``port`` reuse the agent's state (and identity) across restarts."""
    procs: list[DaemonProcess] = []

    def start(
        coordinator_url: str, state_name: str = "agent-proc", port: int | None = None, **extra: str
    ) -> DaemonProcess:
        state = tmp_path / state_name
        state.mkdir(parents=True, exist_ok=True)
        env = agent_env(state, coordinator_url, port or free_port(), **extra)
        proc = DaemonProcess("agent", env, tmp_path / f"{state_name}.log").start()
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            await proc.stop(timeout=10)


@pytest.fixture
async def coordinator_process(tmp_path: Path) -> AsyncIterator[Callable[..., DaemonProcess]]:
    """``proc = coordinator_process(port)``: a real ``python -m coordinator`` on ``port`` (same state each time)."""
    procs: list[DaemonProcess] = []

    def start(port: int, **extra: str) -> DaemonProcess:
        env = {
            "RUSTCI_STATE_DIR": str(tmp_path / "coordinator-proc"),
            "RUSTCI_LISTEN_PORT": str(port),
            "RUSTCI_LISTEN_HOST": "127.0.0.1",
            "RUSTCI_API_KEY": API_KEY,
            "RUSTCI_REGISTRATION_KEY": REGISTRATION_KEY,
            **extra,
        }
        proc = DaemonProcess("coordinator", env, tmp_path / "coordinator-proc.log").start()
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            await proc.stop(timeout=10)


async def wait_http_ok(url: str, timeout: float = 15.0) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def probe() -> bool:
            try:
                async with session.get(url) as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(probe, timeout, interval=0.05, what=f"{url} to answer")


__all__ = ["API_KEY", "REGISTRATION_KEY", "CoordinatorHandle", "asyncio", "wait_http_ok"]


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running after its fixtures are torn down."""
    yield
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if leftovers:
        # Give tasks that are already finishing (cancelled, awaiting their last callback) one loop turn.
        await asyncio.sleep(0)
        leftovers = [t for t in leftovers if not t.done()]
    assert not leftovers, f"tasks leaked by the test: {[t.get_name() for t in leftovers]}"


@pytest.fixture
def process_marker() -> Iterator[Callable[[], ProcessMarker]]:
    """``marker = process_marker()``: a unique marker for a job's processes; leftovers are killed by PID at teardown
    (after the test made its own assertions about them)."""
    markers: list[ProcessMarker] = []

    def make() -> ProcessMarker:
        marker = ProcessMarker()
        markers.append(marker)
        return marker

    try:
        yield make
    finally:
        for marker in markers:
            marker.kill()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres_support.Cluster]:
    """One real PostgreSQL server for the whole session, started on first use (``tests/postgres_support.py``)."""
    postgres_support.require_postgres()
    with postgres_support.cluster() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_cluster: postgres_support.Cluster) -> str:
    """A fresh, empty database on the session's server, as the ``postgresql://`` URL ``database`` takes."""
    return postgres_cluster.create_database()
