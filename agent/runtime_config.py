"""The part of the agent's configuration that can change while it runs (``PUT /runners/{id}/config``, SIGHUP).

Changes are validated as a whole before any applies, persisted in the agent's store (so they survive a
restart and win over the file), then applied live: a higher ``max_concurrent_jobs`` starts queued jobs at
once, a new ``job_timeout`` or ``cleanup_policy`` applies to the next job, a new grace period to the next kill.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.store import AgentStore
from shared.models import ConfigUpdateResult, RunnerConfigUpdate, RunnerConfiguration
from shared.timeutil import parse_iso, utcnow

log = structlog.get_logger(__name__)

SETTING_KEY = "runner_config"
# Settings the API can change that only take effect after a restart. Every field exposed today applies
# live; a field added later that cannot (the executor type, the listen port) belongs here.
RESTART_REQUIRED: frozenset[str] = frozenset()


class RuntimeConfig:
    def __init__(self, config: AgentConfig, store: AgentStore, on_change: Callable[[set[str]], None]) -> None:
        self._config = config
        self._store = store
        self._on_change = on_change
        self.last_updated: datetime = utcnow()
        self.overridden: set[str] = set()
        """Settings set through the API; they win over the config file, on restart and on reload alike."""

    def current(self) -> RunnerConfiguration:
        c = self._config
        return RunnerConfiguration(
            max_concurrent_jobs=c.max_concurrent_jobs,
            job_timeout=c.job_timeout,
            cleanup_policy=c.cleanup_policy,
            kill_grace_period=c.kill_grace_period,
            resource_limits=c.resource_limits,
            docker_config=c.docker_config,
        )

    async def load(self) -> None:
        """Apply the overrides a previous run persisted (they win over the config file)."""
        raw = await self._store.setting(SETTING_KEY)
        if raw is None:
            return
        saved = json.loads(raw)
        update = RunnerConfigUpdate.model_validate(saved.get("values", {}))
        self._apply(update)
        self.overridden = set(update.model_fields_set)
        if saved.get("last_updated"):
            self.last_updated = parse_iso(saved["last_updated"])

    async def update(self, update: RunnerConfigUpdate) -> ConfigUpdateResult:
        changed = self._apply(update)
        self.last_updated = utcnow()
        raw = await self._store.setting(SETTING_KEY)
        values: dict[str, Any] = json.loads(raw).get("values", {}) if raw else {}
        values.update(update.model_dump(mode="json", exclude_unset=True))
        self.overridden |= set(update.model_fields_set)
        await self._store.set_setting(
            SETTING_KEY, json.dumps({"values": values, "last_updated": self.last_updated.isoformat()})
        )
        needs_restart = sorted(changed & RESTART_REQUIRED)
        log.info("runner configuration updated", changed=sorted(changed), restart_required=needs_restart)
        return ConfigUpdateResult(restart_required=bool(needs_restart), restart_required_fields=needs_restart)

    def _apply(self, update: RunnerConfigUpdate) -> set[str]:
        changed: set[str] = set()
        for field in update.model_fields_set:
            value = getattr(update, field)
            if value is None:
                continue
            if getattr(self._config, field) != value:
                changed.add(field)
            setattr(self._config, field, value)
        if changed:
            self._on_change(changed)
        return changed
