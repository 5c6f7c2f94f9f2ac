"""A one-step Docker job through the Docker executor against a bare ``docker run --rm`` of the same image and
command, in the same run (the machine is noisy: only the ratio means something).

The job side is the executor's whole attempt as the agent runs it: ``setup`` (container start), one
``run_step`` (an ``exec`` of ``echo``, output read to its end) and ``cleanup`` (container removal). The
baseline is ``docker run --rm --network none <image> sh -c 'echo ...'`` through the Docker CLI. Both use the
test image ``rustci-busybox:test`` (built from this host's busybox, see ``tests/docker_support.py``).

    python -m bench.bench_docker [--runs 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.executors.base import JobContext, StepContext, Stream
from agent.executors.docker import DockerExecutor
from bench.common import BenchError, main_for
from shared.models import StepSpec
from tests import docker_support

COMMAND = "echo hello from the job"


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, stream: Stream, line: str) -> None:
        self.lines.append(line)

    async def drain(self) -> None:
        return None

    async def flush(self) -> None:
        return None


async def _job(executor: DockerExecutor, root: Path, n: int) -> float:
    job = JobContext(job_id=f"bench-{n}", runner_id="bench", name="bench", attempt=1, workspace=root / str(n))
    out = _Lines()
    started = time.perf_counter()
    await executor.setup(job)
    try:
        code = await executor.run_step(job, StepContext(0, StepSpec(name="s0", run=COMMAND), {}), out)
    finally:
        await executor.cleanup(job)
    took = time.perf_counter() - started
    if code != 0 or out.lines != ["hello from the job"]:
        raise BenchError(f"the job did not run as expected: exit {code}, output {out.lines}")
    return took


def _bare() -> float:
    started = time.perf_counter()
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", docker_support.IMAGE, "sh", "-c", COMMAND],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.perf_counter() - started
    if done.returncode != 0 or done.stdout.strip() != "hello from the job":
        raise BenchError(f"docker run failed: {done.returncode} {done.stderr.strip()}")
    return took


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    problem = docker_support.docker_problem()
    if problem:
        raise BenchError(f"no Docker engine: {problem}")
    await asyncio.to_thread(docker_support.busybox_image)
    config = AgentConfig.model_validate(
        {
            "runner": {"type": "docker"},
            "docker": {"image": docker_support.IMAGE, "pull_policy": "never"},
            "docker_config": {"network_mode": "none"},
        }
    )
    executor = DockerExecutor(config)
    job_times, bare_times = [], []
    with tempfile.TemporaryDirectory(prefix="bench-docker-") as tmp:
        for n in range(args.runs):  # interleaved, so drift in the machine's load hits both sides alike
            job_times.append(await _job(executor, Path(tmp), n))
            bare_times.append(await asyncio.to_thread(_bare))
    job, bare = statistics.median(job_times), statistics.median(bare_times)
    return {
        "runs": args.runs,
        "job_median_s": round(job, 3),
        "docker_run_median_s": round(bare, 3),
        "ratio": round(job / bare, 2),
    }


def render(report: dict[str, Any]) -> str:
    return (
        f"one-step Docker job (executor: setup + exec + cleanup), median of {report['runs']}: "
        f"{report['job_median_s']:.3f} s\n"
        f"bare docker run --rm, median of {report['runs']}: {report['docker_run_median_s']:.3f} s\n"
        f"ratio: {report['ratio']:.2f}x (target <= 1.3x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    return main_for("bench_docker", parser.parse_args(), measure, render)


if __name__ == "__main__":
    raise SystemExit(main())
