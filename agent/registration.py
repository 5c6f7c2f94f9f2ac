"""Registering the runner, or re-announcing the one this agent already is.

A kept identity is reused: the agent updates its runner's host, port and metadata and never creates a
second runner. If the coordinator no longer knows the id, the agent registers anew and says so. While the
coordinator is unreachable it retries with exponential backoff (tenacity), indefinitely.
"""

from __future__ import annotations

from typing import Any

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from agent import identity as identity_store
from agent import sysinfo
from agent.config import AgentConfig
from agent.coordinator_client import CoordinatorClient, CoordinatorUnreachable
from agent.executors.base import Executor
from agent.identity import Identity
from shared.errors import AuthenticationRequired, RunnerNotFound

log = structlog.get_logger(__name__)


class RegistrationRefused(Exception):
    """The coordinator answered but will not register this agent (bad key, invalid config): fatal."""


async def announcement(config: AgentConfig, executor: Executor) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        **sysinfo.host_metadata(),
        "heartbeat_interval": config.heartbeat_interval,
        "max_concurrent_jobs": config.max_concurrent_jobs,
        "executor": executor.name,
        **await executor.metadata(),  # e.g. docker_version, kubernetes_version
        **config.runner.metadata,
    }
    capabilities = list(config.runner.capabilities)
    for capability in await executor.capabilities():  # what the runner can do follows from its executor
        if capability not in capabilities:
            capabilities.append(capability)
    return {
        "name": config.runner.name,
        "type": executor.runner_type,
        "host": config.advertised_host,
        "port": config.listen.port,
        "capabilities": capabilities,
        "metadata": metadata,
        "tags": list(config.runner.tags),
        "resources": sysinfo.resources(config.state_dir),
    }


async def ensure_registered(config: AgentConfig, executor: Executor, client: CoordinatorClient, port: int) -> Identity:
    body = await announcement(config, executor)
    body["port"] = port
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(CoordinatorUnreachable),
        wait=wait_exponential_jitter(multiplier=0.1, max=30, jitter=0.1),
        before_sleep=lambda state: log.warning(
            "coordinator unreachable; will retry registration",
            url=config.coordinator.url,
            attempt=state.attempt_number,
            error=str(state.outcome.exception()) if state.outcome else None,
        ),
    ):
        with attempt:
            return await _register_once(config, client, body)
    raise AssertionError("unreachable")  # AsyncRetrying retries forever


async def _register_once(config: AgentConfig, client: CoordinatorClient, body: dict[str, Any]) -> Identity:
    kept = identity_store.load(config.state_dir)
    if kept is not None:
        update = {k: body[k] for k in ("host", "port", "capabilities", "metadata", "tags", "resources")}
        try:
            await client.call("PUT", f"/runners/{kept.runner_id}", kept.token, update)
            log.info("runner identity reused", runner_id=kept.runner_id)
            return kept
        except (RunnerNotFound, AuthenticationRequired):
            log.warning("coordinator no longer knows this runner; registering again", old_runner_id=kept.runner_id)
    key = config.coordinator.registration_key
    if not key:
        raise RegistrationRefused(
            "no registration key: set coordinator.registration_key in the agent config or RUSTCI_REGISTRATION_KEY"
        )
    try:
        answer = await client.call("POST", "/runners/register", key, body)
    except AuthenticationRequired as e:
        raise RegistrationRefused(f"the coordinator refused the registration key: {e.message}") from e
    except RunnerNotFound as e:  # pragma: no cover - not an answer register gives
        raise RegistrationRefused(e.message) from e
    fresh = Identity(answer["runner_id"], answer["registration_token"], config.coordinator.url)
    identity_store.save(config.state_dir, fresh)
    log.info("runner registered", runner_id=fresh.runner_id, name=body["name"])
    return fresh
