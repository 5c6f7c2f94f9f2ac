"""``rustci-agent``: load the config, run the daemon until SIGTERM/SIGINT.

The first SIGTERM (or Ctrl-C) is a graceful stop: no new jobs, running jobs get ``shutdown_timeout`` to
finish, then exit 0. A second one cancels the running jobs at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import structlog

from agent import config as config_module
from agent.daemon import Agent, ExecutorUnavailable
from agent.registration import RegistrationRefused
from shared import lifeline, logs
from shared.config import ConfigError
from shared.errors import ApiError
from shared.statefiles import EXIT_DAMAGED_STATE, DamagedState
from shared.systemd import Notifier


async def serve(agent: Agent, notifier: Notifier | None = None) -> int:
    log = structlog.get_logger("agent")
    notifier = notifier or Notifier(None)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        # Act first, then log: the stop must happen even if the log line cannot be written.
        if signals_seen == 1:
            stop_requested.set()
            log.info("stopping gracefully", signal=signal.Signals(signum).name)
        else:
            agent.runner_state.stop()
            agent.spawn(agent.supervisor.cancel_running("agent stopped by signal"), "cancel-on-signal")
            log.warning("second signal: cancelling running jobs now", signal=signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    def reload() -> None:
        notifier.reloading()
        agent.reload_config()
        notifier.ready(status())

    def status() -> str:
        supervisor = agent.supervisor
        return f"{agent.state}: {supervisor.active_jobs} job(s) running, {supervisor.queued_jobs} queued"

    loop.add_signal_handler(signal.SIGHUP, reload)
    # Kept apart from the agent's own tasks: keep-alives go on while running jobs drain at shutdown.
    keepalive = asyncio.create_task(notifier.keepalive_forever(status), name="agent:systemd-keepalive")

    def on_launcher_exit() -> None:
        if not stop_requested.is_set():  # already stopping: the launcher's end changes nothing
            stop_requested.set()
            log.warning("the launcher exited; stopping gracefully")

    lifeline.watch(loop, on_launcher_exit)
    try:
        notifier.status("starting: registering with the coordinator")
        start = asyncio.create_task(agent.start())
        stop_wait = asyncio.create_task(stop_requested.wait())
        await asyncio.wait([start, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            notifier.stopping("stopping before registration finished")
            start.cancel()
            stop_wait.cancel()
            await asyncio.gather(start, return_exceptions=True)
            await agent.store.close()
            return 0
        start.result()
        notifier.ready(status())
        await stop_wait
        notifier.stopping(f"stopping: {agent.supervisor.active_jobs} running job(s) get shutdown_timeout to finish")
        await agent.stop()
        log.info("agent stopped")
        return 0
    except (RegistrationRefused, ApiError) as e:
        log.error("registration failed", error=str(e))
        return 3
    finally:
        keepalive.cancel()
        await asyncio.gather(keepalive, return_exceptions=True)
        notifier.close()


def use_pidfd_child_watcher() -> bool:
    """Wait for step processes with pidfds, as Python 3.12+ does by default.

    Python 3.11's default watcher starts a thread per child process, which costs a step's start about a
    millisecond; the pidfd watcher needs Linux 5.3 or later and falls back to the default elsewhere.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rustci-agent", description="RustCI Runner agent")
    parser.add_argument("-c", "--config", type=Path, default=os.environ.get("RUSTCI_CONFIG"), help="YAML config file")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config)
    except ConfigError as e:
        print(f"rustci-agent: {e}", file=sys.stderr)
        return 2
    logs.configure(config.log.level, config.log.format, component="agent")  # type: ignore[arg-type]
    use_pidfd_child_watcher()
    try:
        agent = Agent(config, args.config)
    except ExecutorUnavailable as e:
        where = args.config or "(defaults)"
        print(f"rustci-agent: config error in {where}: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(agent, Notifier.from_environment()))
    except DamagedState as e:
        print(f"rustci-agent: {e}", file=sys.stderr)
        return EXIT_DAMAGED_STATE


if __name__ == "__main__":
    sys.exit(main())
