"""TLS on every hop, with a CA and certificates made at test time: the coordinator serves HTTPS only; the agent,
the SDK, the CLI and ``rustci local up`` verify it; a wrong CA fails with a clear error; mutual TLS for agents;
no plain HTTP off loopback unless a setting says so."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.coordinator_client import CoordinatorClient, CoordinatorUntrusted
from agent.daemon import Agent
from coordinator.config import CoordinatorConfig
from rustci.client import RustCIClient, TLSVerificationError
from shared.config import ConfigError
from tests.conftest import (
    API_KEY,
    REGISTRATION_KEY,
    CoordinatorHandle,
    agent_config,
    coordinator_config,
    running_coordinator,
)
from tests.helpers import REPO, free_port, wait_for
from tests.security.conftest import Pki


def _tls(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file), **extra}


@pytest.fixture
async def tls_coordinator(tmp_path: Path, pki: Pki) -> AsyncIterator[CoordinatorHandle]:
    async with running_coordinator(coordinator_config(tmp_path / "coordinator", tls=_tls(pki))) as handle:
        yield handle


def _client_context(ca_file: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


@contextlib.asynccontextmanager
async def _agent(config: Any) -> AsyncIterator[Agent]:
    agent = Agent(config)
    try:
        await agent.start()
        yield agent
    finally:
        if not agent.stopped.is_set():
            await agent.stop(timeout=2)


async def test_https_only_and_plain_http_is_refused(tls_coordinator: CoordinatorHandle, pki: Pki) -> None:
    assert tls_coordinator.url.startswith("https://")
    connector = aiohttp.TCPConnector(ssl=_client_context(pki.ca_file))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"{tls_coordinator.api_url}/runners", headers={"X-API-Key": API_KEY}) as response:
            assert response.status == 200
    plain = f"http://127.0.0.1:{tls_coordinator.port}/api/health"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(plain, headers={"X-API-Key": API_KEY}) as response:
                await response.read()


async def test_an_agent_registers_and_runs_a_job_over_verified_tls(
    tls_coordinator: CoordinatorHandle, pki: Pki, tmp_path: Path
) -> None:
    config = agent_config(tmp_path / "agent", tls_coordinator.url, coordinator={"ca_file": str(pki.ca_file)})
    async with _agent(config) as agent:
        runner_id = agent.identity().runner_id
        api = tls_coordinator.client()
        await api.session.close()
        api.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_client_context(pki.ca_file)))
        status, job = await api.post(
            f"/runners/{runner_id}/jobs", {"name": "tls", "steps": [{"name": "s", "run": "echo over-tls"}]}
        )
        assert status == 201, job
        done = await api.wait_job(runner_id, job["job_id"], {"completed", "failed", "cancelled"})
        assert done["status"] == "completed"
        _, logs = await api.get(f"/runners/{runner_id}/logs?job_id={job['job_id']}")
        assert "over-tls" in [entry["message"] for entry in logs["logs"]]


async def test_the_agent_with_a_wrong_ca_fails_clearly(tls_coordinator: CoordinatorHandle, pki: Pki) -> None:
    config = agent_config(Path("/nonexistent"), tls_coordinator.url, coordinator={"ca_file": str(pki.other_ca_file)})
    client = CoordinatorClient.for_link(config.coordinator)
    await client.start()
    try:
        with pytest.raises(CoordinatorUntrusted) as refused:
            await client.call("POST", "/runners/register", REGISTRATION_KEY, {})
        assert "certificate is not trusted" in str(refused.value)
        assert "RUSTCI_CA_FILE" in str(refused.value)
    finally:
        await client.close()
    # Without a CA file, the system store does not know the test CA either.
    system = CoordinatorClient.for_link(agent_config(Path("/nonexistent"), tls_coordinator.url).coordinator)
    await system.start()
    try:
        with pytest.raises(CoordinatorUntrusted):
            await system.call("GET", "/health", REGISTRATION_KEY)
    finally:
        await system.close()
    # Only the setting named for it skips verification.
    skip = agent_config(Path("/nonexistent"), tls_coordinator.url, coordinator={"insecure_skip_tls_verify": True})
    insecure = CoordinatorClient.for_link(skip.coordinator)
    await insecure.start()
    try:
        assert (await insecure.call("GET", "/health", REGISTRATION_KEY))["status"] == "ok"
    finally:
        await insecure.close()


async def test_the_sdk_verifies_with_ca_file_or_rustci_ca_file(
    tls_coordinator: CoordinatorHandle, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    def with_ca() -> dict[str, Any]:
        with RustCIClient(tls_coordinator.url, API_KEY, ca_file=str(pki.ca_file)) as client:
            registered = client.register_runner({"name": "sdk", "type": "native", "host": "127.0.0.1", "port": 9})
            return client.get_runner(registered["runner_id"])

    assert (await asyncio.to_thread(with_ca))["name"] == "sdk"

    def from_env() -> int:
        with RustCIClient(tls_coordinator.url, API_KEY) as client:
            return int(client.list_runners()["total_count"])

    monkeypatch.setenv("RUSTCI_CA_FILE", str(pki.ca_file))
    assert await asyncio.to_thread(from_env) == 1

    def wrong_ca() -> str:
        with RustCIClient(tls_coordinator.url, API_KEY, ca_file=str(pki.other_ca_file)) as client:
            try:
                client.list_runners()
            except TLSVerificationError as e:
                return str(e)
        return "no error"

    message = await asyncio.to_thread(wrong_ca)
    assert "TLS verification" in message and str(pki.other_ca_file) in message and "RUSTCI_CA_FILE" in message


async def test_the_cli_over_tls_with_rustci_ca_file(tls_coordinator: CoordinatorHandle, pki: Pki) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUSTCI_")}
    env.update({"RUSTCI_URL": tls_coordinator.url, "RUSTCI_API_KEY": API_KEY})
    argv = [sys.executable, "-m", "rustci", "runners", "list", "-o", "json"]

    async def run(extra: dict[str, str]) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return int(proc.returncode or 0), out.decode(), err.decode()

    code, out, err = await run({"RUSTCI_CA_FILE": str(pki.ca_file)})
    assert code == 0, err
    assert '"total_count": 0' in out or '"total_count":0' in out, out
    code, out, err = await run({"RUSTCI_CA_FILE": str(pki.other_ca_file)})
    assert code != 0
    assert "TLS verification" in err and "Traceback" not in err, err


@pytest.fixture
async def mtls_coordinator(tmp_path: Path, pki: Pki) -> AsyncIterator[CoordinatorHandle]:
    config = coordinator_config(tmp_path / "coordinator", tls=_tls(pki, client_ca_file=str(pki.ca_file)))
    async with running_coordinator(config) as handle:
        yield handle


async def test_mutual_tls_for_agent_credentials(mtls_coordinator: CoordinatorHandle, pki: Pki, tmp_path: Path) -> None:
    url = mtls_coordinator.url
    body = {"name": "m", "type": "native", "host": "127.0.0.1", "port": 9}

    async def call(context: ssl.SSLContext, key: str, method: str = "POST", path: str = "/runners/register") -> Any:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            async with session.request(method, f"{url}/api{path}", json=body, headers={"X-API-Key": key}) as r:
                return r.status, await r.json()

    no_cert = _client_context(pki.ca_file)
    with_cert = _client_context(pki.ca_file, pki.client_cert_file, pki.client_key_file)
    # People (the admin key) need no certificate; the registration key does.
    assert (await call(no_cert, API_KEY, "GET", "/runners"))[0] == 200
    status, refused = await call(no_cert, REGISTRATION_KEY)
    assert status == 401 and "mutual TLS" in refused["error"]["message"]
    status, registered = await call(with_cert, REGISTRATION_KEY)
    assert status == 201, registered
    token = registered["registration_token"]
    heartbeat = f"/runners/{registered['runner_id']}/heartbeat"
    assert (await call(no_cert, token, "POST", heartbeat))[0] == 401
    # A certificate from another CA does not get through the handshake.
    stranger = _client_context(pki.ca_file, pki.other_client_cert_file, pki.other_client_key_file)
    with pytest.raises(aiohttp.ClientError):
        await call(stranger, token, "GET", f"/runners/{registered['runner_id']}")

    # A real agent with its client certificate registers and keeps its runner alive.
    link = {
        "ca_file": str(pki.ca_file),
        "client_cert_file": str(pki.client_cert_file),
        "client_key_file": str(pki.client_key_file),
    }
    async with _agent(agent_config(tmp_path / "agent", url, coordinator=link)) as agent:
        runner_id = agent.identity().runner_id
        api = mtls_coordinator.client()
        await api.session.close()
        api.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=no_cert))
        await api.wait_runner_status(runner_id, "active")


def test_a_non_loopback_bind_needs_tls_or_allow_plaintext(tmp_path: Path, pki: Pki) -> None:
    base: dict[str, Any] = {"state_dir": str(tmp_path), "listen": {"host": "0.0.0.0", "port": 8080}}
    with pytest.raises(ValueError, match="allow_plaintext"):
        CoordinatorConfig.model_validate(base)
    assert CoordinatorConfig.model_validate({**base, "tls": {"allow_plaintext": True}}).plaintext_off_loopback
    assert not CoordinatorConfig.model_validate({**base, "tls": _tls(pki)}).plaintext_off_loopback
    with pytest.raises(ValueError, match="go together"):
        CoordinatorConfig.model_validate({"tls": {"cert_file": str(pki.cert_file)}})


def _coordinator_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUSTCI_")}
    return {
        **env,
        "RUSTCI_STATE_DIR": str(tmp_path / "state"),
        "RUSTCI_LISTEN_HOST": "0.0.0.0",
        "RUSTCI_LISTEN_PORT": str(free_port()),
        "RUSTCI_LOG_FORMAT": "json",
        **extra,
    }


def test_the_daemon_refuses_plaintext_off_loopback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coordinator"],
        cwd=REPO,
        env=_coordinator_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "tls.allow_plaintext" in done.stderr and "Traceback" not in done.stderr


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=out)


async def test_allow_plaintext_starts_with_a_warning(tmp_path: Path) -> None:
    """Bound to 0.0.0.0 inside a network namespace that has only loopback, so nothing is exposed."""
    log = tmp_path / "coordinator.log"
    env = _coordinator_env(tmp_path, RUSTCI_TLS_ALLOW_PLAINTEXT="true")
    proc = _spawn(["unshare", "--net", sys.executable, "-m", "coordinator"], env, log)
    try:

        async def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"coordinator exited {proc.returncode}: {log.read_text()}")
            return "coordinator listening" in log.read_text()

        await wait_for(listening, 30, interval=0.05, what="the coordinator to listen")
        text = log.read_text()
        assert "serving plain HTTP on a non-loopback address" in text
        assert '"level": "warning"' in text or '"level":"warning"' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_unreadable_certificates_are_a_config_error(tmp_path: Path) -> None:
    from coordinator import tls
    from coordinator.config import Tls

    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        tls.server_context(Tls(cert_file=missing, key_file=missing))
