"""What each daemon loads at start: a configuration's unused parts (the Docker and Kubernetes clients, the
OpenAPI generator) are imported only when used. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

LAZY = ("docker", "kubernetes", "coordinator.openapi")


def _loaded(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import coordinator.app, coordinator.cli",
        "from coordinator.app import make_app\nfrom coordinator.config import CoordinatorConfig\n"
        "make_app(CoordinatorConfig())",
        "import agent.cli, agent.daemon",
    ],
)
def test_a_daemon_starts_without_the_clients_and_generators_it_does_not_use(code: str) -> None:
    loaded = _loaded(code)
    assert not {name for name in LAZY if name in loaded}


def test_the_openapi_generator_still_loads_when_asked_for() -> None:
    assert "coordinator.openapi" in _loaded("from coordinator import openapi\nopenapi.document()")
