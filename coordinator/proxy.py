"""The coordinator's client to the agents' own HTTP API.

One keep-alive session for all agents, bounded timeouts on every call: an agent that does not answer is
``RUNNER_UNAVAILABLE``, never a hang. An agent's error envelope comes back as the same typed error.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from coordinator.config import Agents
from coordinator.store.base import RunnerRecord
from shared.errors import (
    ApiError,
    AuthenticationRequired,
    AuthorizationFailed,
    RunnerNotFound,
    RunnerUnavailable,
    from_envelope,
)
from shared.http import dumps


class AgentClient:
    def __init__(self, settings: Agents) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=self._settings.request_timeout, sock_connect=self._settings.connect_timeout
            ),
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=32, keepalive_timeout=60),
            json_serialize=dumps,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def base_url(runner: RunnerRecord) -> str:
        host = f"[{runner.host}]" if ":" in runner.host and not runner.host.startswith("[") else runner.host
        return f"http://{host}:{runner.port}/api/runners/{runner.id}"

    @staticmethod
    def _translate(runner: RunnerRecord, error: ApiError) -> ApiError:
        """An agent that refuses the runner's own token, or does not know the runner, is not this runner's
        agent (another one took its host and port, or its identity was reset): for the caller the runner is
        unavailable; its credentials were fine."""
        if isinstance(error, AuthenticationRequired | AuthorizationFailed | RunnerNotFound):
            return RunnerUnavailable(
                f"The agent at {runner.host}:{runner.port} does not serve runner '{runner.id}' "
                f"(it answered {error.code}: {error.message})",
                runner_id=runner.id,
                host=runner.host,
                port=runner.port,
                agent_error=error.code,
            )
        return error

    async def call(
        self, runner: RunnerRecord, method: str, path: str = "", body: Any = None, timeout: float | None = None
    ) -> Any:
        """Call the runner's agent at ``/api/runners/{id}{path}`` and return its JSON answer."""
        if self._session is None:
            raise RuntimeError("AgentClient.start() was not awaited")
        url = self.base_url(runner) + path
        # Always explicit: aiohttp takes ``timeout=None`` as "no timeout at all", not as the session's default.
        request_timeout = aiohttp.ClientTimeout(
            total=timeout or self._settings.request_timeout, sock_connect=self._settings.connect_timeout
        )
        try:
            async with self._session.request(
                method,
                url,
                json=body,
                headers={"Authorization": f"Bearer {runner.token}"},
                timeout=request_timeout,
            ) as response:
                data = await response.json(content_type=None)
                if response.status >= 400:
                    raise self._translate(runner, from_envelope(response.status, data))
                return data
        except ApiError:
            raise
        except TimeoutError as e:
            raise RunnerUnavailable(
                f"Runner '{runner.id}' did not answer within {timeout or self._settings.request_timeout:g}s",
                runner_id=runner.id,
                host=runner.host,
                port=runner.port,
            ) from e
        except (aiohttp.ClientError, ValueError) as e:
            raise RunnerUnavailable(
                f"Runner '{runner.id}' is not reachable at {runner.host}:{runner.port}: {type(e).__name__}",
                runner_id=runner.id,
                host=runner.host,
                port=runner.port,
            ) from e
