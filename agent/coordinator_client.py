"""The agent's client to the coordinator: one keep-alive session, typed errors.

Over ``https://`` the coordinator's certificate is verified against ``coordinator.ca_file`` (``RUSTCI_CA_FILE``)
or the system's trust store, and never skipped unless ``coordinator.insecure_skip_tls_verify`` says so. Every
connection of the session, the agent channel's WebSocket included, uses that one ``ssl.SSLContext``.

Failover: the client knows a list of coordinators serving one fleet (``coordinator.urls``) and talks to one at a
time. A request or a channel handshake that finds the current one refusing connections, timing out or answering
5xx is tried at the next, once round the list; only when every coordinator failed does the caller see the error
(and back off before the next round). The agent's identity and its event spool do not depend on which
coordinator it talks to, so moving loses nothing.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import structlog

from agent.config import CoordinatorLink
from shared.errors import ApiError, from_envelope
from shared.http import dumps


class CoordinatorUnreachable(Exception):
    """The coordinator did not answer (refused, reset, timed out); worth retrying later."""


class CoordinatorUntrusted(CoordinatorUnreachable):
    """The coordinator's TLS certificate did not verify (wrong CA, wrong host name, expired)."""


log = structlog.get_logger(__name__)
T = TypeVar("T")


def worth_failing_over(error: BaseException) -> bool:
    """The coordinator is gone or failing (no answer, or 5xx): another one of the fleet may serve."""
    if isinstance(error, CoordinatorUntrusted):
        return False  # the same CA signs the fleet's certificates: the next one would not verify either
    if isinstance(error, CoordinatorUnreachable):
        return True
    return isinstance(error, ApiError) and error.status >= 500


def tls_context(
    ca_file: Path | None = None,
    insecure_skip_tls_verify: bool = False,
    client_cert_file: Path | None = None,
    client_key_file: Path | None = None,
) -> ssl.SSLContext:
    """How the agent verifies the coordinator (and, for mutual TLS, proves who it is)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure_skip_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert_file is not None:
        context.load_cert_chain(client_cert_file, client_key_file)
    return context


class CoordinatorClient:
    def __init__(self, base_url: str | list[str], timeout: float, tls: ssl.SSLContext | None = None) -> None:
        urls = [base_url] if isinstance(base_url, str) else base_url
        if not urls:
            raise ValueError("a coordinator client needs at least one URL")
        self.urls = [url.rstrip("/") for url in urls]
        self._current = 0
        self._timeout = timeout
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_link(cls, link: CoordinatorLink) -> CoordinatorClient:
        tls = None
        urls = link.all_urls
        if any(url.startswith("https://") for url in urls):
            tls = tls_context(link.ca_file, link.insecure_skip_tls_verify, link.client_cert_file, link.client_key_file)
            if link.insecure_skip_tls_verify:
                log.warning(
                    "coordinator.insecure_skip_tls_verify is set: the coordinator's certificate is not verified",
                    urls=urls,
                )
        return cls(urls, link.request_timeout, tls)

    @property
    def root_url(self) -> str:
        """The coordinator this client talks to now."""
        return self.urls[self._current]

    @property
    def base_url(self) -> str:
        return self.root_url + "/api"

    async def _each_coordinator(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt`` at the current coordinator, then at the next ones while they fail worth failing over, once
        round the list; the last failure is raised. The one that answered stays current."""
        for tried in range(len(self.urls)):
            try:
                return await attempt()
            except Exception as e:
                if not worth_failing_over(e) or tried == len(self.urls) - 1:
                    raise
                failed = self.root_url
                self._current = (self._current + 1) % len(self.urls)
                log.warning("coordinator failed; trying the next", failed=failed, next=self.root_url, error=str(e))
        raise AssertionError("unreachable")  # the loop returns or raises

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            connector=aiohttp.TCPConnector(limit=8, keepalive_timeout=60, ssl=self._tls if self._tls else True),
            json_serialize=dumps,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def ws_connect(self, path: str, token: str, max_msg_size: int) -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket at ``path`` (under the coordinator's URL) on this same session, authenticated with
        ``token``; failures are :class:`CoordinatorUnreachable`, or the typed error the coordinator answered.
        Tried at each coordinator in turn (see the module docstring)."""
        return await self._each_coordinator(lambda: self._ws_connect(path, token, max_msg_size))

    async def _ws_connect(self, path: str, token: str, max_msg_size: int) -> aiohttp.ClientWebSocketResponse:
        if self._session is None:
            raise RuntimeError("CoordinatorClient.start() was not awaited")
        try:
            return await self._session.ws_connect(
                self.root_url + path,
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._timeout),
                heartbeat=30,
                max_msg_size=max_msg_size,
                # Uncompressed: most of what it carries is small frames, where deflate costs more CPU than it
                # saves on the wire.
                compress=0,
            )
        except aiohttp.WSServerHandshakeError as e:
            if 400 <= e.status < 500:
                raise await self._refusal(path, token, e) from e
            raise CoordinatorUnreachable(f"channel refused: HTTP {e.status}") from e
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise CoordinatorUnreachable(f"channel: {type(e).__name__}: {e}") from e

    async def _refusal(self, path: str, token: str, refused: aiohttp.WSServerHandshakeError) -> Exception:
        """Why the handshake was refused, as the coordinator's typed error: aiohttp does not read the refusal's
        body, so the same URL is asked once more without the upgrade (a coordinator that does not know the
        runner answers RUNNER_NOT_FOUND; one without the channel route, NOT_FOUND, which is no reason to
        register again)."""
        assert self._session is not None
        try:
            async with self._session.get(self.root_url + path, headers={"Authorization": f"Bearer {token}"}) as r:
                data = await r.json(content_type=None)
                if r.status >= 400:
                    return from_envelope(r.status, data)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass
        return CoordinatorUnreachable(f"channel refused: HTTP {refused.status} {refused.message}")

    async def call(self, method: str, path: str, token: str, body: Any = None, raw: str | None = None) -> Any:
        """One API request, tried at each coordinator in turn (see the module docstring)."""
        return await self._each_coordinator(lambda: self._call(method, path, token, body, raw))

    async def _call(self, method: str, path: str, token: str, body: Any, raw: str | None) -> Any:
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
        except aiohttp.ClientConnectorCertificateError as e:
            raise CoordinatorUntrusted(
                f"{method} {path}: the coordinator's TLS certificate is not trusted ({e.certificate_error}); set "
                "coordinator.ca_file (RUSTCI_CA_FILE) to the CA that signed it"
            ) from e
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise CoordinatorUnreachable(f"{method} {path}: {type(e).__name__}: {e}") from e
