"""The API reference's "Python SDK" example, copied verbatim, runs against the coordinator.

Only the base URL and the API key in its ``# Usage`` line are substituted; it runs as its own Python process
(``requests`` comes with the project) while the in-process coordinator serves it.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import API_KEY, CoordinatorHandle

SPEC_EXAMPLE = """\
import requests
import json

class RustCIRunnerClient:
    def __init__(self, base_url, api_key=None):
        self.base_url = base_url
        self.headers = {'Content-Type': 'application/json'}
        if api_key:
            self.headers['X-API-Key'] = api_key

    def register_runner(self, runner_config):
        response = requests.post(
            f"{self.base_url}/api/runners/register",
            headers=self.headers,
            json=runner_config
        )
        return response.json()

    def get_runner_status(self, runner_id):
        response = requests.get(
            f"{self.base_url}/api/runners/{runner_id}/status",
            headers=self.headers
        )
        return response.json()

    def submit_job(self, runner_id, job_config):
        response = requests.post(
            f"{self.base_url}/api/runners/{runner_id}/jobs",
            headers=self.headers,
            json=job_config
        )
        return response.json()

# Usage
client = RustCIRunnerClient("http://localhost:8080", "your-api-key")

# Register runner
runner_config = {
    "name": "my-docker-runner",
    "type": "docker",
    "host": "localhost",
    "port": 8081,
    "capabilities": ["docker"]
}
result = client.register_runner(runner_config)
print(f"Runner registered: {result['runner_id']}")

# Submit job
job_config = {
    "name": "test-job",
    "steps": [{"name": "test", "run": "echo Hello"}]
}
job_result = client.submit_job(result['runner_id'], job_config)
print(f"Job submitted: {job_result['job_id']}")
"""


async def test_spec_python_sdk_example_runs_unchanged(coordinator: CoordinatorHandle, tmp_path: Path) -> None:
    usage = 'client = RustCIRunnerClient("http://localhost:8080", "your-api-key")'
    assert usage in SPEC_EXAMPLE
    script = tmp_path / "spec_example.py"
    script.write_text(SPEC_EXAMPLE.replace(usage, f'client = RustCIRunnerClient("{coordinator.url}", "{API_KEY}")'))

    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    runner = re.search(r"^Runner registered: (runner_\S+)$", done.stdout, re.MULTILINE)
    job = re.search(r"^Job submitted: (job_\S+)$", done.stdout, re.MULTILINE)
    assert runner and job, done.stdout

    # And both exist as printed.
    status, body = await coordinator.api.get(f"/runners/{runner.group(1)}/jobs/{job.group(1)}")
    assert status == 200, body
    assert body["name"] == "test-job"
