"""The shipped example configs load as they are, document every setting, and the deployment files agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from agent import config as agent_config
from coordinator import config as coordinator_config
from tests.helpers import REPO

CONFIGS = REPO / "configs"
SYSTEMD = REPO / "systemd"


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in {*agent_config.ENV_OVERRIDES, *coordinator_config.ENV_OVERRIDES}:
        monkeypatch.delenv(variable, raising=False)


def test_coordinator_example_loads_with_the_defaults() -> None:
    loaded = coordinator_config.load(CONFIGS / "coordinator.yaml")
    assert loaded == coordinator_config.CoordinatorConfig()


def test_agent_example_loads_with_the_defaults() -> None:
    loaded = agent_config.load(CONFIGS / "agent.yaml")
    # The runner name defaults to the host name, which the example leaves commented out.
    assert loaded == agent_config.AgentConfig()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every settings key path, nested groups included."""
    keys = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_keys(annotation, f"{path}."))
    return keys


@pytest.mark.parametrize(
    ("file", "model"),
    [("coordinator.yaml", coordinator_config.CoordinatorConfig), ("agent.yaml", agent_config.AgentConfig)],
)
def test_every_setting_is_in_the_annotated_example(file: str, model: type[BaseModel]) -> None:
    # Commented-out keys count: they are documented even when their default cannot be written down.
    text = (CONFIGS / file).read_text(encoding="utf-8")
    written = {m.group(1) for m in re.finditer(r"^[ #]*([A-Za-z_]+):", text, re.MULTILINE)}
    missing = [key for key in _keys(model) if key.rsplit(".", 1)[-1] not in written]
    assert not missing, f"configs/{file} does not mention: {missing}"


def test_every_environment_override_is_documented() -> None:
    for file, overrides in (
        ("coordinator.yaml", coordinator_config.ENV_OVERRIDES),
        ("agent.yaml", agent_config.ENV_OVERRIDES),
    ):
        text = (CONFIGS / file).read_text(encoding="utf-8")
        for variable, key in overrides.items():
            assert re.search(rf"{variable}\s+{re.escape(key)}\b", text), f"{file}: {variable} → {key}"


def test_prometheus_scrapes_coordinator_and_agent() -> None:
    config = yaml.safe_load((CONFIGS / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        job["job_name"]: (job["metrics_path"], [t for group in job["static_configs"] for t in group["targets"]])
        for job in config["scrape_configs"]
    }
    assert targets["rustci-coordinator"] == ("/metrics", ["localhost:8080"])
    assert targets["rustci-agent"] == ("/metrics", ["localhost:8081"])


def _unit(name: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (repeatable keys keep every value)."""
    settings: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_agent_unit_outlasts_the_agents_own_shutdown() -> None:
    unit = _unit("rustci-agent.service")
    defaults = agent_config.AgentConfig()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["KillMode"] == ["mixed"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecStart"][0].endswith("/bin/rustci-agent -c /etc/rustci/agent.yaml")
    assert _seconds(unit["TimeoutStopSec"][0]) > defaults.shutdown_timeout + defaults.kill_grace_period
    assert unit["User"] == ["rustci"]
    assert unit["StateDirectory"] == ["rustci/agent"]
    assert "RUSTCI_STATE_DIR=%S/rustci/agent" in unit["Environment"]


def test_coordinator_unit() -> None:
    unit = _unit("rustci-coordinator.service")
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecStart"][0].endswith("/bin/rustci-coordinator -c /etc/rustci/coordinator.yaml")
    assert unit["User"] == ["rustci"]
    assert unit["StateDirectory"] == ["rustci/coordinator"]
    assert "RUSTCI_STATE_DIR=%S/rustci/coordinator" in unit["Environment"]


def test_units_run_as_the_user_sysusers_creates() -> None:
    line = (SYSTEMD / "rustci.sysusers.conf").read_text(encoding="utf-8").splitlines()[-1]
    assert line.split()[:2] == ["u", "rustci"]


def test_configs_are_where_the_launcher_looks() -> None:
    from rustci import local

    assert Path(local.CONFIG_DIR) == CONFIGS
