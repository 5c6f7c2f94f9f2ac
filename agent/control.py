"""Runner control: stop, start and restart, the same drain model whether asked by the API or by a signal.

Stop: the runner takes no new jobs (the coordinator holds new submissions as ``queued``); graceful waits for
running jobs up to the timeout and then cancels the rest, non-graceful cancels them at once. Jobs already
queued on the agent stay queued and run after start. Restart: stop, reload the config file, re-create the
executor, start. The transitional states ``starting`` and ``restarting`` are reported while they last.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from shared.models import ControlResult, RestartRequest, StopRequest

if TYPE_CHECKING:
    from agent.daemon import Agent

log = structlog.get_logger(__name__)

STOPPED_KEY = "runner_stopped"


async def stopped_before(agent: Agent) -> bool:
    """Whether the runner was stopped (by the API) when the agent last ran."""
    return await agent.store.setting(STOPPED_KEY) == "1"


class RunnerControl:
    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._transition: asyncio.Task[None] | None = None

    async def stop(self, request: StopRequest) -> ControlResult:
        agent = self._agent
        reason = request.reason or "runner stopped"
        timeout = request.timeout if request.timeout is not None else agent.config.shutdown_timeout
        agent.runner_state.stop()
        await agent.store.set_setting(STOPPED_KEY, "1")  # a stopped runner stays stopped across restarts
        log.info("runner stopping", graceful=request.graceful, timeout=timeout, reason=reason)
        if request.graceful:
            self._replace(agent.supervisor.drain(timeout, reason=f"{reason} (graceful stop timed out)"))
        else:
            self._replace(agent.supervisor.cancel_running(reason))
        await agent.send_heartbeat()
        return ControlResult(message="Runner stopped successfully", status="stopped")

    async def start(self) -> ControlResult:
        agent = self._agent
        agent.runner_state.transition("starting")
        self._replace(self._start())
        return ControlResult(message="Runner started successfully", status="starting")

    async def restart(self, request: RestartRequest) -> ControlResult:
        agent = self._agent
        agent.runner_state.transition("restarting")
        self._replace(self._restart(request))
        return ControlResult(message="Runner restart initiated", status="restarting")

    async def _start(self) -> None:
        agent = self._agent
        await agent.store.set_setting(STOPPED_KEY, "0")
        await agent.send_heartbeat()  # let the coordinator show "starting" while it lasts
        problem = await agent.check_executor()
        if problem:
            # The executor watch moves it to running once the executor can run jobs again.
            agent.runner_state.error()
            await agent.send_heartbeat()
            log.error("runner started, but its executor cannot run jobs yet", error=problem)
            return
        agent.runner_state.start()
        await agent.send_heartbeat()
        log.info("runner started")

    async def _restart(self, request: RestartRequest) -> None:
        agent = self._agent
        await agent.send_heartbeat()
        timeout = request.timeout if request.timeout is not None else agent.config.shutdown_timeout
        if request.graceful:
            await agent.supervisor.drain(timeout, reason="runner restarted (graceful stop timed out)")
        else:
            await agent.supervisor.cancel_running("runner restarted")
        agent.reload_config()
        agent.reset_executor()
        await self._start()

    def _replace(self, work: object) -> None:
        """Run ``work`` as the one control transition in flight; a newer request supersedes an older one."""
        if self._transition is not None and not self._transition.done():
            self._transition.cancel()
        self._transition = self._agent.spawn(work, "control")  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._transition is not None and not self._transition.done():
            self._transition.cancel()
            await asyncio.gather(self._transition, return_exceptions=True)
