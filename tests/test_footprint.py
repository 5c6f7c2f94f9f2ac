"""What each daemon loads at start: a configuration's unused parts (the Docker and Kubernetes clients, the
OpenAPI generator, PyJWT and ``cryptography`` until a JWT or a masked value comes, the YAML parser without a
configuration file) are imported only when used. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

LAZY = ("docker", "kubernetes", "coordinator.openapi", "jwt", "cryptography")


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


def test_jwt_and_the_cipher_still_load_for_a_token_and_a_masked_value(tmp_path: Path) -> None:
    code = (
        "from coordinator import sealing, tokens\nfrom shared.models import JobSubmission\n"
        f"sealer = sealing.Sealer.for_state_dir(Path({str(tmp_path)!r}))\n"
        "spec = JobSubmission.model_validate({'name': 'j', 'steps': [{'name': 's', 'run': 'true'}],"
        " 'environment': {'SECRET': 'hunter2-hunter2'}, 'masked': ['SECRET']})\n"
        "assert 'hunter2' not in sealer.seal(spec)\n"
    )
    assert "cryptography" in _loaded("from pathlib import Path\n" + code)
    assert "jwt" in _loaded("from coordinator import tokens\ntokens.issue('s' * 32, 'me', 'viewer', 60)")


def test_an_agent_configured_by_its_environment_does_not_load_the_yaml_parser() -> None:
    loaded = _loaded("import agent.cli, agent.daemon\nfrom agent.config import load\nload(None)")
    assert "agent.config" in loaded and "yaml" not in loaded


def test_the_yaml_parser_still_loads_for_a_configuration_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"state_dir: {tmp_path}\n")
    loaded = _loaded(f"from pathlib import Path\nfrom agent.config import load\nload(Path({str(config)!r}))")
    assert "yaml" in loaded
