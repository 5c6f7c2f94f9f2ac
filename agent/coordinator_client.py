"""The agent's client to the coordinator: one keep-alive session, typed errors."""

from __future__ import annotations

from typing import Any

import aiohttp

from shared.errors import ApiError, from_envelope
from shared.http import dumps


class CoordinatorUnreachable(Exception):
    """The coordinator did not answer (refused, reset, timed out); worth retrying later."""


class CoordinatorClient:
    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/") + "/api"
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            connector=aiohttp.TCPConnector(limit=8, keepalive_timeout=60),
            json_serialize=dumps,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, token: str, body: Any = None, raw: str | None = None) -> Any:
        if self._session is None:
            raise RuntimeError("CoordinatorClient.start() was not awaited")
        headers = {"X-API-Key": token} if not token.startswith("reg_token_") else {"Authorization": f"Bearer {token}"}
        if raw is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method, self.base_url + path, json=body if raw is None else None, data=raw, headers=headers
            ) as response:
                data = await response.json(content_type=None)
                if response.status >= 400:
                    error = from_envelope(response.status, data)
                    if "Retry-After" in response.headers:  # how long a 429 or 503 asks the caller to wait
                        error.details.setdefault("retry_after", response.headers["Retry-After"])
                    raise error
                return data
        except ApiError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise CoordinatorUnreachable(f"{method} {path}: {type(e).__name__}: {e}") from e
