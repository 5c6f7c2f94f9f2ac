"""``make run`` (``rustci local up``) with ``RUSTCI_TLS_CERT``, ``RUSTCI_TLS_KEY`` and ``RUSTCI_CA_FILE``: the
banner shows the ``https://`` URL, the local agent registers over verified TLS and runs a job."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.helpers import Api, free_port
from tests.rustci.test_local_up import Launch
from tests.security.conftest import Pki


def _start(tmp_path: Path, pki: Pki, port: int) -> Launch:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUSTCI_")}
    env.update(
        {"RUSTCI_TLS_CERT": str(pki.cert_file), "RUSTCI_TLS_KEY": str(pki.key_file), "RUSTCI_CA_FILE": str(pki.ca_file)}
    )
    argv = [sys.executable, "-m", "rustci", "local", "up", "--port", str(port), "--agent-port", str(free_port())]
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [*argv, "--state-dir", str(tmp_path / "state")],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    return Launch(proc, out, err, port)


async def test_local_up_over_verified_tls(tmp_path: Path, pki: Pki) -> None:
    port = free_port()
    launched = _start(tmp_path, pki, port)
    try:
        banner = await launched.banner()
        assert banner.api_url == f"https://localhost:{port}/api"
        assert f"curl --cacert {pki.ca_file}" in launched.stdout()
        api = Api(banner.api_url, banner.api_key)
        await api.session.close()
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        api.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        try:
            status, runner = await api.get(f"/runners/{banner.runner_id}")
            assert status == 200 and runner["status"] == "active", runner
            status, job = await api.post(
                f"/runners/{banner.runner_id}/jobs", {"name": "hello", "steps": [{"name": "s", "run": "echo Hello"}]}
            )
            assert status == 201, job
            done = await api.wait_job(banner.runner_id, job["job_id"], {"completed", "failed", "cancelled"})
            assert done["status"] == "completed"
        finally:
            await api.close()
        assert "https://127.0.0.1" in launched.stderr()  # the agent's coordinator URL, as it logged it
        launched.proc.send_signal(signal.SIGTERM)
        assert await launched.exit_code() == 0, launched.stderr()
    finally:
        launched.kill_all()


def test_local_up_with_a_certificate_but_no_ca_says_what_is_missing(tmp_path: Path, pki: Pki) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUSTCI_")}
    env.update({"RUSTCI_TLS_CERT": str(pki.cert_file), "RUSTCI_TLS_KEY": str(pki.key_file)})
    argv = [sys.executable, "-m", "rustci", "local", "up", "--port", str(free_port()), "--agent-port", str(free_port())]
    done = subprocess.run(
        [*argv, "--state-dir", str(tmp_path / "state")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "RUSTCI_CA_FILE" in done.stderr and "Traceback" not in done.stderr
