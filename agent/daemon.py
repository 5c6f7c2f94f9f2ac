"""The agent daemon: composes the store, the channel, registration, heartbeats, the outbox and the job queue.

Start order: open the store, serve the local HTTP API (health, metrics), register, resume jobs left from a
previous run, then start the background tasks, among them the channel to the coordinator (which delivers jobs
as soon as it is open). Stop order: stop taking jobs, drain running ones within the timeout, flush the outbox
one last time, stop the tasks, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from agent import api, control, executors, registration, sysinfo
from agent import config as config_module
from agent import identity as identity_store
from agent.channel import Channel
from agent.config import AgentConfig
from agent.control import RunnerControl
from agent.coordinator_client import CoordinatorClient, CoordinatorUnreachable
from agent.executors.base import Executor, ExecutorError
from agent.identity import Identity
from agent.metrics import AgentMetrics
from agent.registration import ensure_registered
from agent.runner import JobRunner
from agent.runner_state import RunnerState
from agent.runtime_config import RuntimeConfig
from agent.shipping import Outbox, Shipper
from agent.store import AgentStore
from agent.supervisor import Supervisor
from shared.errors import ApiError, AuthenticationRequired, RunnerNotFound
from shared.models import MAX_SAMPLES_PER_HEARTBEAT, AgentState, Heartbeat
from shared.protocol import Hello
from shared.tasks import TaskSet

log = structlog.get_logger(__name__)


class ExecutorUnavailable(Exception):
    """The configured executor cannot be used on this host; the daemon stops with this one-line message."""


def make_executor(config: AgentConfig) -> Executor:
    """The executor ``runner.type`` names (see the registry in ``agent.executors``)."""
    try:
        return executors.create(config)
    except (executors.UnknownExecutor, ExecutorError) as e:
        raise ExecutorUnavailable(f"runner.type: {e}") from e


# Settings SIGHUP and restart apply from the file without a process restart.
RELOADABLE = (
    "max_concurrent_jobs",
    "job_timeout",
    "cleanup_policy",
    "kill_grace_period",
    "heartbeat_interval",
    "environment",
    "resource_limits",
    "docker_config",
    "docker",
    "kubernetes",
    "native",
    "shutdown_timeout",
)


class Agent:
    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.store = AgentStore(config.state_dir / "agent.db")
        self.client = CoordinatorClient.for_link(config.coordinator)
        self._identity: Identity | None = None
        self.outbox = Outbox(self.store, self.identity, spool_max_bytes=config.log_spool_max_bytes)
        self.metrics = AgentMetrics(config.metrics_buffer)
        self.executor = make_executor(config)
        self.job_runner = JobRunner(config, self.metrics.instrument(self.executor), self.outbox)
        self.supervisor = Supervisor(self.store, self.outbox, self.job_runner, config.max_concurrent_jobs)
        self.runtime = RuntimeConfig(config, self.store, self._config_changed)
        self.control = RunnerControl(self)
        self.channel = Channel(
            self.client, self.identity, self._hello, api.calls(self), self._forgotten, self._channel_open
        )
        self.shipper = Shipper(
            self.outbox,
            self.channel,
            self.identity,
            self._forgotten,
            config.coordinator.request_timeout,
            on_quarantined=self.metrics.events_quarantined.inc,
        )
        self.runner_state = RunnerState(self.supervisor)
        self.heartbeat_failures = 0
        self._tasks = TaskSet("agent")
        self._site_runner: web.AppRunner | None = None
        self._reregister = asyncio.Event()
        self.port = config.listen.port
        self.stopped = asyncio.Event()

    @property
    def state(self) -> AgentState:
        return self.runner_state.state

    # --- identity ------------------------------------------------------------------------------------------

    def identity(self) -> Identity:
        if self._identity is None:
            raise RuntimeError("the agent has not registered yet")
        return self._identity

    @property
    def identity_or_none(self) -> Identity | None:
        return self._identity

    def _forgotten(self) -> None:
        self._reregister.set()

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(work, name)

    # --- configuration -------------------------------------------------------------------------------------

    def _config_changed(self, fields: set[str]) -> None:
        if "max_concurrent_jobs" in fields:
            self.supervisor.set_limit(self.config.max_concurrent_jobs)
        self.executor.configure(fields)

    def reload_config(self) -> None:
        """Re-read the config file and apply what can change live; log what needs a process restart."""
        if self.config_path is None:
            return
        try:
            fresh = config_module.load(self.config_path)
        except Exception as e:
            log.error("config reload failed; keeping the running configuration", error=str(e))
            return
        differs = {name for name in AgentConfig.model_fields if getattr(fresh, name) != getattr(self.config, name)}
        kept = differs & self.runtime.overridden  # set through the API: the API's value stands
        changed = (differs & set(RELOADABLE)) - kept
        for name in changed:
            setattr(self.config, name, getattr(fresh, name))
        self._config_changed(changed)
        needs_restart = sorted(differs - set(RELOADABLE) - kept)
        log.info(
            "configuration reloaded", applied=sorted(changed), kept_api_values=sorted(kept), needs_restart=needs_restart
        )
        if changed & {"max_concurrent_jobs", "heartbeat_interval"} and self._identity is not None:
            self.spawn(self.announce_limits(), "announce")

    async def announce_limits(self) -> None:
        """Tell the registry the limits it shows and plans with (start-time estimates, liveness): a new hello."""
        try:
            await self.channel.request("hello", await self._hello(), self.config.coordinator.request_timeout)
        except (CoordinatorUnreachable, ApiError) as e:
            log.warning("could not announce the new limits; the next connect announces them", error=str(e))

    async def _hello(self) -> Hello:
        body = await registration.announcement(self.config, self.executor)
        body["port"] = self.port
        del body["name"], body["type"]  # chosen at registration, not announced
        return Hello(version=str(body["metadata"].get("agent_version", "")), state=self.state, **body)

    def _channel_open(self) -> None:
        """A (re)opened channel: resend what is unacknowledged and say how the runner is, at once."""
        self.outbox.pending.set()
        self.spawn(self.send_heartbeat(), "heartbeat:connect")

    def reset_executor(self) -> None:
        self.executor = make_executor(self.config)
        self.job_runner.executor = self.metrics.instrument(self.executor)

    async def check_executor(self) -> str | None:
        """Why the executor cannot run jobs now (its engine or cluster is unreachable), or None when it can."""
        try:
            await self.executor.check()
        except ExecutorError as e:
            return str(e)
        return None

    async def _watch_executor(self) -> None:
        """Put the runner in ``error`` while its executor cannot run jobs, and back when it can.

        In ``error`` the agent takes no jobs: the coordinator holds them, and they run once the executor is
        back, instead of failing one after another. A runner stopped through the API stays stopped."""
        while True:
            problem = await self.check_executor()
            if problem and self.state == "running":
                self.runner_state.error()
                log.error("executor cannot run jobs; taking none until it can", error=problem)
                await self.send_heartbeat()
            elif not problem and self.runner_state.recovered():
                log.info("executor can run jobs again")
                await self.send_heartbeat()
            await asyncio.sleep(self.config.heartbeat_interval)

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._release()
            raise

    async def _release(self) -> None:
        await self.control.close()
        await self._tasks.close()
        await self.channel.close()
        await self.supervisor.close()
        if self._site_runner is not None:
            await self._site_runner.cleanup()
            self._site_runner = None
        await self.client.close()
        await self.store.close()
        self.stopped.set()

    async def _start(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        # Saved overrides (PUT /config) first: registration announces the limit, and the API serves the config.
        await self.runtime.load()
        await self.client.start()
        self._site_runner = web.AppRunner(api.make_api(self), access_log=None, handle_signals=False)
        await self._site_runner.setup()
        site = web.TCPSite(self._site_runner, self.config.listen.host, self.config.listen.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        log.info("agent health and metrics listening", host=self.config.listen.host, port=self.port)
        self._identity = await ensure_registered(self.config, self.executor, self.client, self.port)
        structlog.contextvars.bind_contextvars(runner_id=self._identity.runner_id)
        open_jobs = {job.job_id for job in await self.store.open_jobs()}
        await self.executor.start(self._identity.runner_id, open_jobs)
        await self.supervisor.resume(self.executor.recover)
        if await control.stopped_before(self):
            log.info("runner was stopped before the agent restarted; it stays stopped until started")
            self.runner_state.stop()
        elif problem := await self.check_executor():
            log.error("executor cannot run jobs; taking none until it can", error=problem)
            self.runner_state.error()
        else:
            self.runner_state.start()
        self._tasks.spawn(self.outbox.run_writer(), "log-writer")
        self._tasks.spawn(self.shipper.run(), "shipper")
        self._tasks.spawn(self.channel.run(), "channel")
        self._tasks.spawn(self.supervisor.run(), "supervisor")
        self._tasks.spawn(self._heartbeats(), "heartbeat")
        self._tasks.spawn(self._watch_executor(), "executor-watch")
        self._tasks.spawn(
            self.metrics.sample_forever(
                self.config.metrics_interval, self.config.state_dir, lambda: self.supervisor.active_jobs
            ),
            "metric-samples",
        )
        self._tasks.spawn(self._watch_identity(), "identity")
        self.outbox.pending.set()  # resend whatever a previous run left unacknowledged

    async def stop(self, timeout: float | None = None) -> None:
        """Graceful: running jobs get ``timeout`` seconds (default ``shutdown_timeout``), then are cancelled."""
        self.runner_state.stop()
        await self.supervisor.drain(self.config.shutdown_timeout if timeout is None else timeout)
        await self.outbox.flush()
        await self._ship_remaining(deadline=2.0)
        await self._release()

    async def _ship_remaining(self, deadline: float) -> None:
        """Give the shipper a moment to deliver the final reports; anything left is resent on the next start."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                while self._identity is not None and await self.store.pending_events(self._identity.runner_id, 1):
                    self.outbox.pending.set()
                    await asyncio.sleep(0.02)

    # --- background work -----------------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # a channel about to open is not a failed heartbeat yet
                async with asyncio.timeout(self.config.heartbeat_interval):
                    await self.channel.connected.wait()
            await self.send_heartbeat()
            await asyncio.sleep(self.config.heartbeat_interval)

    async def send_heartbeat(self) -> None:
        samples = self.metrics.samples.pending(MAX_SAMPLES_PER_HEARTBEAT)
        beat = Heartbeat(
            load=sysinfo.load(self.config.state_dir, self.supervisor.active_jobs, self.supervisor.queued_jobs),
            state=self.state,
            heartbeat_interval=self.config.heartbeat_interval,
            samples=samples,
        )
        try:
            await self.channel.request("heartbeat", beat, self.config.coordinator.request_timeout)
            self.metrics.samples.acknowledge(samples)
            if self.heartbeat_failures:
                log.info("heartbeats resumed", missed=self.heartbeat_failures)
            self.heartbeat_failures = 0
        except (RunnerNotFound, AuthenticationRequired):
            self._forgotten()
        except (CoordinatorUnreachable, ApiError) as e:
            self.heartbeat_failures += 1
            self.metrics.heartbeat_failures.inc()
            log.warning("heartbeat failed", error=str(e), consecutive=self.heartbeat_failures)

    async def _watch_identity(self) -> None:
        """When the coordinator forgets this runner (deleted), drop its work and register anew."""
        while True:
            await self._reregister.wait()
            old = self.identity()
            await self.supervisor.cancel_running("runner was deleted on the coordinator")
            dropped = await self.store.forget_runner(old.runner_id)
            identity_store.path_in(self.config.state_dir).unlink(missing_ok=True)
            self._identity = await ensure_registered(self.config, self.executor, self.client, self.port)
            structlog.contextvars.bind_contextvars(runner_id=self._identity.runner_id)
            log.warning("registered as a new runner", old_runner_id=old.runner_id, dropped_jobs=dropped)
            self._reregister.clear()
            await self.channel.reconnect()  # the channel is the old runner's: open the new one's
