"""The coordinator as a service: systemd notifications and config reload on SIGHUP.

- ``READY=1`` once the API listens (:func:`announce_ready`, which ``web.run_app`` calls after every site has
  started), ``STATUS=`` lines while it serves, ``STOPPING=1`` as shutdown begins, and ``WATCHDOG=1`` from the
  event loop at half ``WatchdogSec`` (see :mod:`shared.systemd`).
- SIGHUP (``systemctl reload``) re-reads the config file and applies what can change live (:data:`LIVE`):
  log level and format, rate limits, the bounds on calls to agents, the log stream's keep-alive, the
  heartbeat interval assumed for new runners. Any other change is logged as needing a restart; a file that
  does not load leaves the running configuration as it is.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel

from coordinator import config as config_module
from coordinator import keys
from shared import logs
from shared.config import ConfigError
from shared.systemd import Notifier
from shared.tasks import TaskSet

log = structlog.get_logger(__name__)

# Settings a reload applies to the running coordinator (each is read where it is used, or re-applied below).
LIVE = frozenset(
    {
        "log.level",
        "log.format",
        "rate_limits.enabled",
        "rate_limits.registration_per_minute",
        "rate_limits.status_per_minute",
        "rate_limits.job_submission_per_minute",
        "rate_limits.bulk_per_minute",
        "agents.request_timeout",
        "agents.status_timeout",
        "log_stream.keepalive_interval",
        "runners.default_heartbeat_interval",
    }
)


def differences(old: BaseModel, new: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted key paths whose values differ, with the new values."""
    changed: dict[str, Any] = {}
    for name in type(old).model_fields:
        before, after = getattr(old, name), getattr(new, name)
        path = f"{prefix}{name}"
        if isinstance(before, BaseModel) and isinstance(after, BaseModel):
            changed.update(differences(before, after, f"{path}."))
        elif before != after:
            changed[path] = after
    return changed


def reload_config(app: web.Application, path: Path | None, notifier: Notifier) -> dict[str, list[str]]:
    """Re-read ``path`` and apply the live settings to ``app``; what was applied and what needs a restart."""
    if path is None:
        log.info("configuration reload asked, but the coordinator runs on its defaults (no -c FILE)")
        return {"applied": [], "needs_restart": []}
    notifier.reloading()
    config = app[keys.CONFIG]
    try:
        fresh = config_module.load(path)
    except ConfigError as e:
        log.error("config reload failed; keeping the running configuration", error=str(e))
        notifier.ready("serving (config reload failed; see the log)")
        return {"applied": [], "needs_restart": []}
    changed = differences(config, fresh)
    applied = sorted(set(changed) & LIVE)
    for key in applied:
        group, leaf = key.split(".")
        setattr(getattr(config, group), leaf, changed[key])
    if any(key.startswith("log.") for key in applied):
        logs.configure(config.log.level, config.log.format)  # type: ignore[arg-type]
    if any(key.startswith("rate_limits.") for key in applied):
        app[keys.RATE_LIMITER].configure(config.rate_limits)
    needs_restart = sorted(set(changed) - LIVE)
    log.info("configuration reloaded", applied=applied, needs_restart=needs_restart)
    notifier.ready(_status(app))
    return {"applied": applied, "needs_restart": needs_restart}


def _status(app: web.Application) -> str:
    listen = app[keys.CONFIG].listen
    return (
        f"serving on {listen.host}:{listen.port}: {app[keys.HUB].client_count} WebSocket client(s),"
        f" {app[keys.LOG_FEED].follower_count} log follower(s)"
    )


def announce_ready(app: web.Application, notifier: Notifier) -> None:
    """The API listens: tell systemd (and the log)."""
    config = app[keys.CONFIG]
    log.info(
        "coordinator listening",
        url=f"http://{config.listen.host}:{config.listen.port}/api",
        database=config.database_name,
    )
    notifier.ready(_status(app))


def setup_service(app: web.Application, notifier: Notifier, config_path: Path | None) -> None:
    """Keep-alives and status while the app runs, ``STOPPING=1`` on shutdown, reload on SIGHUP."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        notifier.status("starting")
        tasks = TaskSet("service")
        tasks.spawn(notifier.keepalive_forever(lambda: _status(app)), "systemd-keepalive")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, reload_config, app, config_path, notifier)
        yield
        loop.remove_signal_handler(signal.SIGHUP)
        await tasks.close()
        notifier.close()

    async def stopping(_: web.Application) -> None:
        notifier.stopping("stopping: closing connections")

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.insert(0, stopping)
