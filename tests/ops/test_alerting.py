"""The example Prometheus files: every one loads, the alerting rules pass ``promtool`` (checks and the rule unit
tests in ``alerts_test.yml``) when it is available, and every metric an alert reads is one the daemons serve."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import REPO

CONFIGS = REPO / "configs"
ALERTS = CONFIGS / "alerts.yml"
DURATION = re.compile(r"^\d+[smhdw]$")
# Names in PromQL that are functions, keywords or Prometheus' own series, not our metrics.
NOT_METRICS = {"sum", "by", "rate", "increase", "and", "or", "unless", "without", "on", "status", "up"}


def promtool() -> str | None:
    return os.environ.get("RUSTCI_PROMTOOL") or shutil.which("promtool")


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_every_example_config_is_valid_yaml() -> None:
    files = sorted(CONFIGS.glob("*.y*ml"))
    assert {f.name for f in files} >= {"coordinator.yaml", "agent.yaml", "prometheus.yml", "alerts.yml"}
    for path in files:
        assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict), path
    assert yaml.safe_load((CONFIGS / "prometheus.yml").read_text())["rule_files"] == ["alerts.yml"]


def test_alerting_rules_are_complete_and_cover_the_operational_failures() -> None:
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names))
    for rule in found:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert "for" not in rule or DURATION.match(rule["for"]), rule["alert"]
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), rule["alert"]
        assert expr.count("[") == expr.count("]"), rule["alert"]
    exprs = " ".join(rule["expr"] for rule in found)
    for metric in (
        'up{job="rustci-agent"}',  # runner host down
        "rustci_runners",  # runner inactive or in error
        "rustci_agent_heartbeat_failures_total",  # heartbeat gaps
        "rustci_jobs_finished_total",  # job failure rate
        "rustci_agent_spool_dropped_total",  # spool drops
        "rustci_storage_errors_total",  # storage errors
        "rustci_agent_storage_errors_total",
    ):
        assert metric in exprs, metric


async def test_every_metric_an_alert_reads_is_served(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent()
    served: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for url in (f"{coordinator.url}/metrics", f"http://127.0.0.1:{agent.port}/metrics"):
            async with session.get(url) as response:
                text = await response.text()
            served |= {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    read = set()
    for rule in rules():
        without_labels = re.sub(r"\{[^}]*\}", "", rule["expr"])
        without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
        read |= {name for name in re.findall(r"[a-z_][a-z0-9_]*", without_ranges) if "_" in name}
    read -= NOT_METRICS
    assert read, "no metric names found in the rules"
    assert read <= served, sorted(read - served)


@pytest.mark.skipif(promtool() is None, reason="promtool is not installed (set RUSTCI_PROMTOOL)")
@pytest.mark.parametrize(
    "argv",
    [
        ["check", "rules", str(ALERTS)],
        ["check", "config", str(CONFIGS / "prometheus.yml")],
        ["test", "rules", str(Path(__file__).with_name("alerts_test.yml"))],
    ],
    ids=["check-rules", "check-config", "rule-unit-tests"],
)
def test_promtool(argv: list[str]) -> None:
    tool = promtool()
    assert tool is not None
    result = subprocess.run([tool, *argv], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
