"""Dispatch on PostgreSQL against SQLite, and across two coordinators, in one run on one host.

Starts its own PostgreSQL server (``tests/postgres_support.py``: Debian's binaries, a temp dir, a loopback port;
stopped and removed afterwards), then for each setup a real coordinator and a real agent as subprocesses
(``bench/common.py``):

1. SQLite, one coordinator (the embedded default): the baseline;
2. PostgreSQL, one coordinator;
3. PostgreSQL, two coordinators on the one database, the agent's channel on the first: jobs submitted through
   the first and through the second, interleaved, each timed from its ``POST`` to the ``completed`` event on the
   WebSocket of the coordinator it was submitted through.

Measured per setup: submit → completed of sequential one-step ``true`` jobs (p50/p99, ``bench_submit_latency``'s
loop), throughput with a bounded number in flight (``bench_throughput``'s loop), the daemons' CPU per job, and on
PostgreSQL the server's CPU and transactions per job (``pg_stat_database.xact_commit``), which is what capacity
across hosts is argued from in ``docs/benchmarks.md``. Targets: PostgreSQL within 1.5x of SQLite for latency
and throughput; through the coordinator that does not hold the channel at most 2 ms later (p50).

    python bench/bench_postgres.py [--jobs 200] [--burst 400] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg
import psutil

from bench.bench_submit_latency import Watcher, submit_one
from bench.bench_throughput import run_jobs
from bench.common import (
    API_KEY,
    REGISTRATION_KEY,
    BenchError,
    Cluster,
    Daemon,
    cluster,
    free_port,
    host_info,
    main_for,
    poll_until,
    ratio,
    summarize,
)
from tests import postgres_support

LATENCY_RATIO_TARGET = 1.5
CROSS_COORDINATOR_TARGET_MS = 2.0


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def _postgres_pids(server: postgres_support.Cluster) -> list[int]:
    """The server's processes (the postmaster and its backends)."""
    pid_file = server.data / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    parent = psutil.Process(postmaster)
    return [postmaster, *(p.pid for p in parent.children())]


async def _commits(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _second_coordinator(c: Cluster, database: str) -> AsyncIterator[Cluster]:
    """Another coordinator on the same database (its own state dir and port), as a Cluster view of it."""
    port = free_port()
    state = c.root / "coordinator-b"
    state.mkdir()
    daemon = Daemon(
        "coordinator",
        {
            "RUSTCI_STATE_DIR": str(state),
            "RUSTCI_LISTEN_HOST": "127.0.0.1",
            "RUSTCI_LISTEN_PORT": str(port),
            "RUSTCI_API_KEY": API_KEY,
            "RUSTCI_REGISTRATION_KEY": REGISTRATION_KEY,
            "RUSTCI_LOG_LEVEL": "warning",
            "RUSTCI_RATE_LIMITS_ENABLED": "false",
            "RUSTCI_DATABASE": database,
        },
        c.root / "coordinator-b.log",
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:

            async def healthy() -> bool:
                daemon.check_alive()
                try:
                    async with session.get(f"{url}/api/health") as r:
                        return r.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    return False

            await poll_until(healthy, 30, f"the second coordinator at {url}")
        yield replace(c, coordinator_url=url, coordinator=daemon)
    finally:
        await daemon.stop()


async def _latency(nodes: list[Cluster], jobs: int, warmup: int, timeout: float) -> dict[str, list[float]]:
    """Sequential jobs, round-robin over ``nodes`` (each submitted and watched on its own coordinator)."""
    samples: dict[str, list[float]] = {n.coordinator_url: [] for n in nodes}
    connector = aiohttp.TCPConnector(limit=8, keepalive_timeout=120)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        sockets = [await session.ws_connect(f"{n.ws_url}?events=job_status_change", headers=n.headers) for n in nodes]
        watchers = [Watcher() for _ in nodes]
        readers = [asyncio.create_task(w.run(ws), name="bench:ws") for w, ws in zip(watchers, sockets, strict=True)]
        try:
            deadline = time.perf_counter() + timeout
            for n in range(warmup + jobs):
                i = n % len(nodes)
                _, times = await submit_one(session, nodes[i], watchers[i], deadline)
                if n >= warmup:
                    samples[nodes[i].coordinator_url].append(times.terminal - times.before_post)
        finally:
            for ws in sockets:
                await ws.close()
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return samples


async def _setup(
    name: str, args: argparse.Namespace, database: str | None, server: postgres_support.Cluster | None
) -> dict[str, Any]:
    env = {"RUSTCI_DATABASE": database} if database else {}
    agent_env = {"RUSTCI_MAX_CONCURRENT_JOBS": str(args.slots)}
    async with cluster(extra_coordinator_env=env, extra_agent_env=agent_env) as c:
        pids = [p for p in (c.coordinator.pid, c.agent.pid) if p]
        db_pids = _postgres_pids(server) if server else []
        commits = await _commits(database) if database else 0
        cpu, db_cpu = _cpu(pids), _cpu(db_pids)
        latency = (await _latency([c], args.jobs, args.warmup, args.timeout))[c.coordinator_url]
        took, outcome, doubled = await run_jobs(c, args.burst, args.in_flight, args.timeout)
        count = args.jobs + args.warmup + args.burst
        result: dict[str, Any] = {
            "setup": name,
            "submit_to_completed_ms": summarize(latency).as_dict(),
            "jobs_per_s": round(args.burst / took, 1),
            "completed_exactly_once": outcome.get("completed", 0) == args.burst and doubled == 0,
            "daemons_cpu_ms_per_job": round((_cpu(pids) - cpu) * 1000 / count, 3),
        }
        if database:
            result["postgres_cpu_ms_per_job"] = round((_cpu(_postgres_pids(server) if server else []) - db_cpu)
                                                      * 1000 / count, 3)  # fmt: skip
            result["transactions_per_job"] = round((await _commits(database) - commits) / count, 2)
        if database and args.two:
            async with _second_coordinator(c, database) as other:
                both = await _latency([c, other], args.jobs, args.warmup, args.timeout)
            result["through_holder_ms"] = summarize(both[c.coordinator_url]).as_dict()
            result["through_other_ms"] = summarize(both[other.coordinator_url]).as_dict()
        return result


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    host = host_info()
    problem = postgres_support.postgres_problem()
    if problem:
        raise BenchError(problem)
    results = [await _setup("sqlite", args, None, None)]
    server = postgres_support.Cluster()
    try:
        server.start()
        results.append(await _setup("postgresql", args, server.create_database(), server))
    finally:
        server.stop()
    sqlite, pg = results
    p50 = {r["setup"]: r["submit_to_completed_ms"]["p50"] for r in results}
    report: dict[str, Any] = {
        "benchmark": "postgres",
        "jobs": args.jobs,
        "burst": args.burst,
        "results": results,
        "latency_p50_ratio": round(ratio(p50["postgresql"], p50["sqlite"]), 2),
        "throughput_ratio": round(ratio(sqlite["jobs_per_s"], pg["jobs_per_s"]), 2),
        "targets": {"ratio": LATENCY_RATIO_TARGET, "cross_coordinator_ms": CROSS_COORDINATOR_TARGET_MS},
        "host": host,
    }
    if "through_other_ms" in pg:
        report["cross_coordinator_p50_delta_ms"] = round(
            pg["through_other_ms"]["p50"] - pg["through_holder_ms"]["p50"], 3
        )
    return report


def render(report: dict[str, Any]) -> str:
    lines = [f"dispatch on PostgreSQL vs SQLite: {report['jobs']} sequential jobs, burst of {report['burst']}", ""]
    lines.append("| setup | p50 ms | p99 ms | jobs/s | daemons CPU ms/job | PostgreSQL CPU ms/job | transactions/job |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in report["results"]:
        s = r["submit_to_completed_ms"]
        lines.append(
            f"| {r['setup']} | {s['p50']:.2f} | {s['p99']:.2f} | {r['jobs_per_s']:.1f}"
            f" | {r['daemons_cpu_ms_per_job']:.2f} | {r.get('postgres_cpu_ms_per_job', '-')}"
            f" | {r.get('transactions_per_job', '-')} |"
        )
    lines.append("")
    lines.append(
        f"PostgreSQL against SQLite: latency p50 {report['latency_p50_ratio']}x, throughput"
        f" {report['throughput_ratio']}x lower (each target ≤ {LATENCY_RATIO_TARGET}x)"
    )
    pg = report["results"][1]
    if "through_other_ms" in pg:
        lines.append(
            f"two coordinators: through the channel's holder p50 {pg['through_holder_ms']['p50']:.2f} ms, through"
            f" the other {pg['through_other_ms']['p50']:.2f} ms: +{report['cross_coordinator_p50_delta_ms']} ms"
            f" (target ≤ {CROSS_COORDINATOR_TARGET_MS} ms)"
        )
    host = report["host"]
    lines.append(f"host: {host['cpus']} CPUs, load {host['load_average_1m']}, git {host['git']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=200, help="sequential measured jobs per setup (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up jobs, not counted (default 10)")
    parser.add_argument("--burst", type=int, default=400, help="jobs of the throughput run (default 400)")
    parser.add_argument("--in-flight", type=int, default=16, help="throughput run: jobs in flight (default 16)")
    parser.add_argument("--slots", type=int, default=8, help="the agent's concurrent jobs (default 8)")
    parser.add_argument("--timeout", type=float, default=180.0, help="abort a loop after this many seconds")
    parser.add_argument("--no-two", dest="two", action="store_false", help="skip the two-coordinator run")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if min(args.jobs, args.burst, args.in_flight, args.slots) < 1 or args.warmup < 0 or args.timeout <= 0:
        parser.error("counts must be ≥ 1, --warmup ≥ 0, --timeout > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return main_for("bench_postgres", parse_args(argv), measure, render)


if __name__ == "__main__":
    sys.exit(main())
