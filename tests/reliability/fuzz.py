"""Fuzz the live coordinator and agent with schemathesis, inside a network namespace that has only loopback.

``python -m tests.reliability.fuzz`` (CI runs it after the test suite; it needs root for ``unshare --net``).
It starts a real coordinator and a real native agent, then runs schemathesis against each from the
coordinator's OpenAPI document (``/api/openapi.json``): the coordinator on every operation, the agent on the
operations it serves itself (runner configuration and control, job cancel), with the checks
``not_a_server_error``, ``status_code_conformance``, ``content_type_conformance`` and
``response_schema_conformance``, a fixed seed, about 50 examples per operation and a time bound. Generated
runner addresses can reach nothing but this namespace's loopback. Exit status: 0 when nothing failed.

A 503 is an answer the API documents (``RUNNER_UNAVAILABLE`` for a runner that cannot be reached, which every
runner the fuzzer registers with a made-up address is; ``STORAGE_UNAVAILABLE``), so ``not_a_server_error``
counts every other 5xx.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO, DaemonProcess, free_port, wait_for

INSIDE = "RUSTCI_FUZZ_NAMESPACE"
SEED = 20261201
EXAMPLES = 50
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
COORDINATOR_TIME = 120  # seconds of fuzzing for the coordinator, and for the agent below
AGENT_TIME = 60
API_KEY = "fuzz-admin-key-0123456789abcdef"
REGISTRATION_KEY = "fuzz-registration-key-0123456789"
AGENT_OPERATIONS = r"^/runners/\{runner_id\}/(config|start|stop|restart|jobs/\{job_id\}/cancel)$"
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503"]

[parameters]
"path.runner_id" = "${RUSTCI_FUZZ_RUNNER_ID}"
"""


@dataclass
class Figures:
    target: str
    operations: int
    requests: int
    failures: int
    code: int


def _figures(target: str, output: str, code: int) -> Figures:
    tested = re.search(r"Tested:\s+(\d+)", output)
    generated = re.search(r"(\d+) generated", output)
    failed = re.search(r"(\d+) found (\d+) unique failures", output)
    return Figures(
        target,
        int(tested.group(1)) if tested else 0,
        int(generated.group(1)) if generated else 0,
        int(failed.group(2)) if failed else (0 if code == 0 else -1),
        code,
    )


def _schemathesis(
    target: str, workdir: Path, schema: str, base_url: str, header: str, seconds: int, *extra: str
) -> Figures:
    (workdir / "schemathesis.toml").write_text(CONFIG, encoding="utf-8")
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        schema,
        "--url",
        base_url,
        "-H",
        header,
        "--checks",
        CHECKS,
        "--seed",
        str(SEED),
        "--max-examples",
        str(EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-time",
        str(seconds),
        "--request-timeout",
        "10",
        "--no-color",
        *extra,
    ]
    done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=seconds + 120)
    print(done.stdout[-20000:], file=sys.stderr)
    return _figures(target, done.stdout, done.returncode)


async def _fuzz(workdir: Path) -> list[Figures]:
    port, agent_port = free_port(), free_port()
    coordinator = DaemonProcess(
        "coordinator",
        {
            "RUSTCI_STATE_DIR": str(workdir / "coordinator"),
            "RUSTCI_LISTEN_PORT": str(port),
            "RUSTCI_LISTEN_HOST": "127.0.0.1",
            "RUSTCI_API_KEY": API_KEY,
            "RUSTCI_REGISTRATION_KEY": REGISTRATION_KEY,
            "RUSTCI_RATE_LIMITS_ENABLED": "false",
            "RUSTCI_LOG_LEVEL": "warning",
        },
        workdir / "coordinator.log",
    ).start()
    url = f"http://127.0.0.1:{port}"
    agent = DaemonProcess(
        "agent",
        {
            "RUSTCI_COORDINATOR_URL": url,
            "RUSTCI_REGISTRATION_KEY": REGISTRATION_KEY,
            "RUSTCI_STATE_DIR": str(workdir / "agent"),
            "RUSTCI_AGENT_PORT": str(agent_port),
            "RUSTCI_AGENT_HOST": "127.0.0.1",
            "RUSTCI_RUNNER_NAME": "fuzz-runner",
            "RUSTCI_LOG_LEVEL": "warning",
        },
        workdir / "agent.log",
    ).start()
    try:
        identity_file = workdir / "agent" / "identity.json"

        async def registered() -> bool:
            if not agent.alive() or not coordinator.alive():
                raise AssertionError(f"a daemon exited:\n{coordinator.log()}\n{agent.log()}")
            return await asyncio.to_thread(identity_file.exists)

        await wait_for(registered, 60, interval=0.1, what="the agent to register")
        identity = json.loads(identity_file.read_text(encoding="utf-8"))
        os.environ["RUSTCI_FUZZ_RUNNER_ID"] = identity["runner_id"]
        schema = f"{url}/api/openapi.json"
        results = [
            await asyncio.to_thread(
                _schemathesis,
                "agent",
                workdir,
                schema,
                f"http://127.0.0.1:{agent_port}/api",
                f"Authorization: Bearer {identity['token']}",
                AGENT_TIME,
                "--include-path-regex",
                AGENT_OPERATIONS,
            ),
            await asyncio.to_thread(
                _schemathesis, "coordinator", workdir, schema, f"{url}/api", f"X-API-Key: {API_KEY}", COORDINATOR_TIME
            ),
        ]
        for name, proc in (("coordinator", coordinator), ("agent", agent)):
            if not proc.alive():
                raise AssertionError(f"the {name} died while fuzzed:\n{proc.log()[-5000:]}")
        return results
    finally:
        await agent.stop(timeout=20)
        await coordinator.stop(timeout=20)


def main() -> int:
    if os.environ.get(INSIDE) != "1":
        if shutil.which("unshare") is None:
            print("fuzz: unshare (util-linux) is needed for the loopback-only network namespace", file=sys.stderr)
            return 2
        inner = f"ip link set lo up && exec {sys.executable} -m tests.reliability.fuzz"
        env = {**os.environ, INSIDE: "1"}
        return subprocess.run(["unshare", "--net", "--", "sh", "-c", inner], cwd=REPO, env=env).returncode
    with tempfile.TemporaryDirectory(prefix="rustci-fuzz-") as tmp:
        results = asyncio.run(_fuzz(Path(tmp)))
    print("fuzz: target        operations  requests  failures", file=sys.stderr)
    for r in results:
        print(f"fuzz: {r.target:<13} {r.operations:>10}  {r.requests:>8}  {r.failures:>8}", file=sys.stderr)
    return 0 if all(r.code == 0 and r.failures == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
