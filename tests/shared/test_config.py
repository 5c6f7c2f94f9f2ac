"""Daemon configuration: a bad file stops ``python -m coordinator|agent -c FILE`` with exit 2 and one line that
names the file, the key path and what is allowed; ``RUSTCI_*`` variables override the file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import config as agent_config
from coordinator import config as coordinator_config
from tests.conftest import wait_http_ok
from tests.helpers import REPO, DaemonProcess, free_port

PROGRAMS = {"coordinator": "rustci-coordinator", "agent": "rustci-agent"}


def _clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUSTCI_")}
    return {**env, **extra}


def _refused(module: str, config: Path | None, **env: str) -> str:
    """Run the daemon; it must exit 2 at once with exactly one line on stderr. Returns that line."""
    args = [sys.executable, "-m", module] + (["-c", str(config)] if config else [])
    done = subprocess.run(args, cwd=REPO, env=_clean_environ(**env), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert done.stdout == ""
    line = lines[0]
    assert line.startswith(f"{PROGRAMS[module]}: config error in "), line
    assert "Traceback" not in line
    return line


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# (daemon, YAML text, what the line must also contain besides the file's name)
BAD_FILES: dict[str, tuple[str, str, list[str]]] = {
    "coordinator-unknown-nested-key": (
        "coordinator",
        "listen:\n  host: 127.0.0.1\n  prot: 8080\n",
        ["listen.prot: unknown key", "allowed: header_read_timeout, keepalive_timeout, host, port"],
    ),
    "coordinator-port-out-of-range": (
        "coordinator",
        "listen:\n  port: 70000\n",
        ["listen.port:", "less than or equal to 65535", "70000"],
    ),
    "coordinator-wrong-type": (
        "coordinator",
        "runners:\n  liveness_check_interval: fast\n",
        ["runners.liveness_check_interval:", "number", "'fast'"],
    ),
    "coordinator-timeout-not-positive": (
        "coordinator",
        "agents:\n  request_timeout: 0\n",
        ["agents.request_timeout:", "greater than 0"],
    ),
    "coordinator-log-level": (
        "coordinator",
        "log:\n  level: loud\n",
        ["log.level:", "debug|info|warning|warn|error", "'loud'"],
    ),
    "coordinator-short-key": (
        "coordinator",
        "auth:\n  api_key: short\n",
        ["auth.api_key:", "at least 16 characters"],
    ),
    "coordinator-section-not-a-mapping": (
        "coordinator",
        "listen: 8080\n",
        ["listen:"],
    ),
    "agent-runner-type": (
        "agent",
        "runner:\n  type: podman\n",
        ["runner.type:", "unknown executor 'podman'", "docker, kubernetes, local, native"],
    ),
    "agent-unknown-runner-key": (
        "agent",
        "runner:\n  name: r1\n  tgas: [a]\n",
        ["runner.tgas: unknown key", "allowed: name, type, capabilities, tags, metadata"],
    ),
    "agent-heartbeat-negative": (
        "agent",
        "heartbeat_interval: -1\n",
        ["heartbeat_interval:", "greater than 0", "-1"],
    ),
    "agent-coordinator-url": (
        "agent",
        "coordinator:\n  url: ftp://coordinator\n",
        ["coordinator.url:", "https?://"],
    ),
    "agent-cleanup-policy": (
        "agent",
        "cleanup_policy: sometimes\n",
        ["cleanup_policy:", "'always'", "'on_success'", "'never'"],
    ),
    "agent-executor-unusable": (
        "agent",
        "runner:\n  type: kubernetes\nkubernetes:\n  kubeconfig: /nonexistent/kubeconfig\n",
        ["runner.type:", "/nonexistent/kubeconfig"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_a_bad_key_or_value_stops_the_daemon_with_one_line(tmp_path: Path, case: str) -> None:
    module, text, expected = BAD_FILES[case]
    path = _write(tmp_path, text)
    line = _refused(module, path)
    assert line.startswith(f"{PROGRAMS[module]}: config error in {path}: "), line
    for part in expected:
        assert part in line, (part, line)


@pytest.mark.parametrize("module", ["coordinator", "agent"])
def test_an_unknown_top_level_key_lists_every_allowed_key(tmp_path: Path, module: str) -> None:
    path = _write(tmp_path, "state_dir: /tmp/x\nstate_dri: /tmp/y\n")
    line = _refused(module, path)
    assert f"{path}: state_dri: unknown key (allowed: " in line, line
    allowed = line.split("(allowed: ", 1)[1].rstrip(")").split(", ")
    model = coordinator_config.CoordinatorConfig if module == "coordinator" else agent_config.AgentConfig
    assert allowed == list(model.model_fields)
    for key in ("state_dir", "listen", "log"):
        assert key in allowed


def test_several_mistakes_still_give_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "listen:\n  port: -1\n  prot: 1\nlog:\n  format: xml\n")
    line = _refused("coordinator", path)
    assert "(and 2 more)" in line, line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen:\n  port: [8080\n", "not valid YAML at line"),
        ("- listen\n- port\n", "the top level must be a mapping"),
    ],
    ids=["invalid-yaml", "top-level-list"],
)
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    line = _refused("coordinator", path)
    assert line.startswith(f"rustci-coordinator: config error in {path}: {expected}"), line


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    line = _refused("agent", path)
    assert line.startswith(f"rustci-agent: config error in {path}: cannot read file"), line


@pytest.mark.parametrize(
    ("module", "variable", "key"),
    [
        ("coordinator", "RUSTCI_LISTEN_PORT", "listen.port"),
        ("agent", "RUSTCI_HEARTBEAT_INTERVAL", "heartbeat_interval"),
    ],
)
def test_a_bad_environment_override_names_the_variable(tmp_path: Path, module: str, variable: str, key: str) -> None:
    path = _write(tmp_path, "state_dir: /tmp/x\n")
    line = _refused(module, path, **{variable: "abc"})
    assert f"config error in {path} with {variable} from the environment: {key}: " in line, line
    assert "'abc'" in line


# --- overrides, in process ----------------------------------------------------------------------------------


@pytest.fixture
def no_rustci_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in [*coordinator_config.ENV_OVERRIDES, *agent_config.ENV_OVERRIDES]:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_environment_overrides_the_coordinator_file(tmp_path: Path, no_rustci_env: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "listen:\n  host: 127.0.0.1\n  port: 8080\n")
    assert coordinator_config.load(path).listen.port == 8080
    no_rustci_env.setenv("RUSTCI_LISTEN_PORT", "9123")
    no_rustci_env.setenv("RUSTCI_API_KEY", "1234567890123456789")  # all digits: still a string key
    no_rustci_env.setenv("RUSTCI_STATE_DIR", str(tmp_path / "state"))
    loaded = coordinator_config.load(path)
    assert loaded.listen.port == 9123
    assert loaded.listen.host == "127.0.0.1"  # the file's, untouched
    assert loaded.auth.api_key == "1234567890123456789"
    assert loaded.state_dir == tmp_path / "state"
    assert loaded.database_path == tmp_path / "state" / "coordinator.db"


def test_environment_overrides_the_agent_file(tmp_path: Path, no_rustci_env: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "runner:\n  name: from-file\n  tags: [a]\nheartbeat_interval: 5\n")
    no_rustci_env.setenv("RUSTCI_RUNNER_NAME", "2024")
    no_rustci_env.setenv("RUSTCI_HEARTBEAT_INTERVAL", "0.25")
    no_rustci_env.setenv("RUSTCI_MAX_CONCURRENT_JOBS", "3")
    loaded = agent_config.load(path)
    assert loaded.runner.name == "2024"
    assert loaded.runner.tags == ["a"]
    assert loaded.heartbeat_interval == 0.25
    assert loaded.max_concurrent_jobs == 3
    no_rustci_env.setenv("RUSTCI_RUNNER_NAME", "yes")
    assert agent_config.load(path).runner.name == "yes"


@pytest.mark.parametrize("name", ["coordinator.yaml", "agent.yaml"])
def test_the_annotated_example_configs_load(name: str, no_rustci_env: pytest.MonkeyPatch) -> None:
    module = coordinator_config if name == "coordinator.yaml" else agent_config
    path = REPO / "configs" / name
    loaded = module.load(path)  # type: ignore[attr-defined]
    defaults = module.load(None)  # type: ignore[attr-defined]
    assert loaded.model_dump() == defaults.model_dump()


async def test_the_port_from_the_environment_wins_over_the_file_in_a_real_coordinator(
    tmp_path: Path, coordinator_process: Callable[..., DaemonProcess]
) -> None:
    file_port, env_port = free_port(), free_port()
    path = _write(tmp_path, f"listen:\n  host: 127.0.0.1\n  port: {file_port}\n")
    proc = coordinator_process(env_port, RUSTCI_CONFIG=str(path))
    await wait_http_ok(f"http://127.0.0.1:{env_port}/api/health")
    assert proc.alive()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", file_port)) != 0, "the file's port must not be served"


def test_workspaces_are_absolute_even_under_a_relative_state_dir() -> None:
    # ``make run`` keeps its state in .rustci/; a step runs with its workspace as its working directory, so
    # a relative workspace path (and the step script's path under it) would not resolve there.
    from agent.config import AgentConfig

    config = AgentConfig.model_validate({"state_dir": ".rustci/agent"})
    assert config.workspaces.is_absolute()
    assert config.workspaces == (Path(".rustci/agent") / "workspaces").absolute()
