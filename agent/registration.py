"""Registering the runner, or re-announcing the one this agent already is.

A kept identity is reused (the channel's hello re-announces host, port and metadata) and never creates a
second runner. If the coordinator no longer knows the id, the agent registers anew and says so.

While the coordinator is unreachable, answers 5xx, or rate-limits the agent (429), registration retries,
indefinitely: after a 429 or 503 it waits as the answer's ``Retry-After`` says, otherwise with exponential
backoff and jitter (tenacity), so many hosts booting at once do not retry in step. Only a refusal (a bad or
missing key, a registration the coordinator will never accept) stops the agent.
"""

from __future__ import annotations

import random
from typing import Any

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from agent import identity as identity_store
from agent import sysinfo
from agent.config import AgentConfig
from agent.coordinator_client import CoordinatorClient, CoordinatorUnreachable
from agent.executors.base import Executor
from agent.identity import Identity
from shared.errors import ApiError, AuthenticationRequired, RateLimitExceeded, RunnerNotFound

log = structlog.get_logger(__name__)


class RegistrationRefused(Exception):
    """The coordinator answered but will not register this agent (bad key, invalid config): fatal."""


MAX_RETRY_AFTER = 300.0
"""The longest a ``Retry-After`` is obeyed (seconds); a larger one is capped, never trusted blindly."""
_backoff = wait_exponential_jitter(multiplier=0.1, max=30, jitter=0.5)


def _transient(error: BaseException) -> bool:
    """Worth waiting for: no answer, an overloaded or failing coordinator, a rate limit."""
    if isinstance(error, CoordinatorUnreachable | RateLimitExceeded):
        return True
    return isinstance(error, ApiError) and error.status >= 500


def _retry_after(error: BaseException | None) -> float | None:
    raw = error.details.get("retry_after") if isinstance(error, ApiError) else None
    try:
        return min(max(float(raw), 0.0), MAX_RETRY_AFTER) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _wait(state: RetryCallState) -> float:
    """As long as the coordinator's ``Retry-After`` says (plus a little jitter), else exponential backoff."""
    asked = _retry_after(state.outcome.exception() if state.outcome else None)
    if asked is not None:
        return asked + random.uniform(0, min(1.0, asked / 10 + 0.1))
    return float(_backoff(state))


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
        retry=retry_if_exception(_transient),
        wait=_wait,
        before_sleep=lambda state: log.warning(
            "coordinator unreachable; will retry registration",
            url=client.root_url,
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
        # Its announcement (host, port, metadata) is the channel's hello; a coordinator that no longer knows
        # the runner refuses the channel, and the agent registers anew then.
        log.info("runner identity reused", runner_id=kept.runner_id)
        return kept
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
    fresh = Identity(answer["runner_id"], answer["registration_token"], client.root_url)
    identity_store.save(config.state_dir, fresh)
    log.info("runner registered", runner_id=fresh.runner_id, name=body["name"])
    return fresh
