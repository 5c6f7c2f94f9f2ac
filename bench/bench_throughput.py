"""Throughput: one-step ``true`` jobs over several agents, a bounded number in flight, each completed once.

Starts ``python -m coordinator`` and ``--agents`` ``python -m agent`` subprocesses (``--slots`` concurrent jobs
each) on loopback, subscribes to ``WS /api/runners/ws?events=job_status_change``, then submits ``--jobs`` jobs
round-robin over the runners with at most ``--in-flight`` not yet completed. A job is done when its terminal
event arrives; every job must end ``completed`` exactly once. Reported: jobs per second over the whole run, the
daemons' CPU per job (user + system, the jobs' own processes excluded), and in the same run the baseline of
bare ``/bin/sh -c true`` spawns at ``--slots`` concurrency.

    python bench/bench_throughput.py [--jobs 3000] [--agents 4] [--slots 8] [--in-flight 32] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import psutil

from bench.common import BenchError, Cluster, cluster, host_info, main_for, spawn_true

TARGET_JOBS_PER_S = 700.0
JOB = {"name": "bench", "steps": [{"name": "s", "run": "true"}]}
TERMINAL = frozenset({"completed", "failed", "timed_out", "cancelled"})


def cpu_seconds(c: Cluster) -> dict[str, float]:
    def used(pid: int | None) -> float:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)

    return {"coordinator": used(c.coordinator.pid), "agents": sum(used(a.pid) for a in c.agents)}


async def run_jobs(c: Cluster, jobs: int, in_flight: int, timeout: float) -> tuple[float, dict[str, int], int]:
    """Submit and wait; returns (seconds, terminal statuses counted, jobs with more than one terminal event)."""
    terminal: collections.Counter[str] = collections.Counter()
    outcome: collections.Counter[str] = collections.Counter()
    done: dict[str, asyncio.Event] = {}
    slots = asyncio.Semaphore(in_flight)
    connector = aiohttp.TCPConnector(limit=in_flight, keepalive_timeout=120)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        ws = await session.ws_connect(f"{c.ws_url}?events=job_status_change", headers=c.headers)

        async def watch() -> None:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                status, job_id = event.get("new_status"), event.get("job_id")
                if status in TERMINAL and isinstance(job_id, str):
                    terminal[job_id] += 1
                    outcome[status] += 1
                    done.setdefault(job_id, asyncio.Event()).set()

        async def one(n: int) -> None:
            runner_id = c.runner_ids[n % len(c.runner_ids)]
            async with slots:
                async with session.post(f"{c.api}/runners/{runner_id}/jobs", json=JOB, headers=c.headers) as r:
                    body = await r.json(content_type=None)
                    if r.status != 201:
                        raise BenchError(f"submit answered {r.status}: {body}")
                await done.setdefault(str(body["job_id"]), asyncio.Event()).wait()

        reader = asyncio.create_task(watch(), name="bench:ws")
        try:
            started = time.perf_counter()
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(one(n) for n in range(jobs)))
            took = time.perf_counter() - started
        except TimeoutError:
            raise BenchError(f"not all {jobs} jobs completed within {timeout}s: {dict(outcome)}") from None
        finally:
            await ws.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return took, dict(outcome), sum(1 for count in terminal.values() if count > 1)


async def spawn_rate(concurrency: int, count: int) -> float:
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            await spawn_true()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - started)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    host = host_info()
    agent_env = {"RUSTCI_MAX_CONCURRENT_JOBS": str(args.slots)}
    if args.advertise_host:
        agent_env["RUSTCI_ADVERTISE_HOST"] = args.advertise_host
    async with cluster(log_level=args.log_level, extra_agent_env=agent_env, agents=args.agents) as c:
        await run_jobs(c, min(100, args.jobs), args.in_flight, args.timeout)  # warm-up
        before = cpu_seconds(c)
        took, outcome, doubled = await run_jobs(c, args.jobs, args.in_flight, args.timeout)
        after = cpu_seconds(c)
    spawns = await spawn_rate(args.slots, min(args.jobs, 1000))
    return {
        "benchmark": "throughput",
        "jobs": args.jobs,
        "agents": args.agents,
        "slots_per_agent": args.slots,
        "in_flight": args.in_flight,
        "seconds": round(took, 3),
        "jobs_per_s": round(args.jobs / took, 1),
        "target_jobs_per_s": TARGET_JOBS_PER_S,
        "outcomes": outcome,
        "completed_exactly_once": outcome.get("completed", 0) == args.jobs and doubled == 0,
        "cpu_ms_per_job": {k: round((after[k] - before[k]) * 1000 / args.jobs, 3) for k in before},
        "baseline_spawns_per_s": round(spawns, 1),
        "advertise_host": args.advertise_host,
        "host": host,
    }


def render(report: dict[str, Any]) -> str:
    cpu = report["cpu_ms_per_job"]
    host = report["host"]
    return "\n".join(
        [
            f"throughput: {report['jobs']} one-step jobs (run: true) over {report['agents']} agents x"
            f" {report['slots_per_agent']} slots, at most {report['in_flight']} in flight",
            f"  {report['jobs_per_s']:.0f} jobs/s ({report['seconds']:.2f} s; target {TARGET_JOBS_PER_S:.0f});"
            f" completed exactly once: {report['completed_exactly_once']} {report['outcomes']}",
            f"  CPU per job: coordinator {cpu['coordinator']:.2f} ms, agents {cpu['agents']:.2f} ms",
            f"  baseline: bare /bin/sh -c true at concurrency {report['slots_per_agent']}:"
            f" {report['baseline_spawns_per_s']:.0f}/s",
            f"  agent advertised at {report['advertise_host'] or 'its listen address'}",
            f"host: {host['cpus']} CPUs, load {host['load_average_1m']}, Python {host['python']}, git {host['git']}",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8, help="max_concurrent_jobs of each agent")
    parser.add_argument("--in-flight", type=int, default=32, help="most jobs submitted and not yet completed")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--advertise-host", default=None, help="the agents' RUSTCI_ADVERTISE_HOST, e.g. 127.0.0.9")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return main_for("bench_throughput", parse_args(argv), measure, render)


if __name__ == "__main__":
    sys.exit(main())
