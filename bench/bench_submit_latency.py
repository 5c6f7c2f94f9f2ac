"""Submit → completed latency of a trivial job through a real coordinator and a real agent, on one host.

Starts ``python -m coordinator`` and ``python -m agent`` as subprocesses on loopback, subscribes to
``WS /api/runners/ws?events=job_status_change``, then submits one-step jobs (``run: true``) one after another
over a single keep-alive session. Each job is timed from just before its ``POST /api/runners/{id}/jobs`` to the
moment the WebSocket delivers its ``completed`` event. Two baselines are measured in the same run, so the
result can be read against what the host itself costs:

- spawn: ``asyncio.create_subprocess_exec("/bin/sh", "-c", "true")`` + wait, with the executor's pipes;
- HTTP RTT: ``GET /api/health`` on the coordinator over the same keep-alive session.

DESIGN.md ("Fast path") targets about 2 ms at p50 for submit → completed.

    python bench/bench_submit_latency.py [--jobs N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import psutil

from bench.common import (
    BenchError,
    Cluster,
    Summary,
    busy_host_warning_from,
    cluster,
    host_info,
    main_for,
    ratio,
    spawn_true,
    summarize,
    table,
)

TARGET_P50_MS = 2.0
JOB = {"name": "bench", "steps": [{"name": "s", "run": "true"}]}
TERMINAL = frozenset({"completed", "failed", "timed_out", "cancelled"})


@dataclass
class JobTimes:
    """``time.perf_counter()`` marks of one job, as seen by the client."""

    before_post: float
    after_post: float = math.nan
    running: float = math.nan
    terminal: float = math.nan
    status: str | None = None


@dataclass
class Watcher:
    """Reads the WebSocket and timestamps each job's status changes on arrival."""

    seen: dict[str, dict[str, float]] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    closed: BaseException | None = None

    async def run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                now = time.perf_counter()
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                if event.get("type") != "job_status_change":
                    continue
                job_id = event.get("job_id")
                status = event.get("new_status")
                if not isinstance(job_id, str) or not isinstance(status, str):
                    continue
                self.seen.setdefault(job_id, {}).setdefault(status, now)
                if status in TERMINAL:
                    waiter = self.waiters.pop(job_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(status)
            self.closed = BenchError(f"the WebSocket closed (code {ws.close_code})")
        except Exception as e:  # handed to whoever waits
            self.closed = e
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_exception(self.closed)

    async def wait_terminal(self, job_id: str, timeout: float) -> str:
        for status in self.seen.get(job_id, {}):
            if status in TERMINAL:
                return status
        if self.closed is not None:
            raise self.closed
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiters[job_id] = waiter
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            raise BenchError(f"time budget exhausted waiting for job {job_id} to complete") from None
        finally:
            self.waiters.pop(job_id, None)


async def submit_one(
    session: aiohttp.ClientSession, c: Cluster, watcher: Watcher, deadline: float
) -> tuple[str, JobTimes]:
    url = f"{c.api}/runners/{c.runner_id}/jobs"
    times = JobTimes(before_post=time.perf_counter())
    async with session.post(url, json=JOB, headers=c.headers) as response:
        body = await response.json(content_type=None)
        times.after_post = time.perf_counter()
        if response.status != 201:
            raise BenchError(f"POST {url} answered {response.status}: {body}")
    job_id = str(body["job_id"])
    remaining = deadline - time.perf_counter()
    if remaining <= 0:
        raise BenchError(f"time budget exhausted after submitting job {job_id}")
    status = await watcher.wait_terminal(job_id, remaining)
    marks = watcher.seen.pop(job_id, {})
    times.status = status
    times.terminal = marks.get(status, math.nan)
    times.running = marks.get("running", math.nan)
    if status != "completed":
        raise BenchError(f"job {job_id} ended {status!r}, expected 'completed'")
    return job_id, times


def daemon_cpu(c: Cluster) -> dict[str, float]:
    """CPU seconds (user + system) each daemon has used so far; children (the jobs' processes) not counted."""
    used = {}
    for name, daemon in (("coordinator", c.coordinator), ("agent", c.agent)):
        times = psutil.Process(daemon.pid).cpu_times()
        used[name] = times.user + times.system
    return used


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    host = host_info()  # before the daemons start: the load average says whether other work shares the host
    agent_env = {"RUSTCI_ADVERTISE_HOST": args.advertise_host} if args.advertise_host else None
    async with cluster(log_level=args.log_level, keep_state=args.keep_state, extra_agent_env=agent_env) as c:
        connector = aiohttp.TCPConnector(limit=4, keepalive_timeout=120)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            ws = await session.ws_connect(f"{c.ws_url}?events=job_status_change", headers=c.headers)
            watcher = Watcher()
            reader = asyncio.create_task(watcher.run(ws), name="bench:ws")
            try:
                started = time.perf_counter()
                deadline = started + args.timeout
                samples: list[JobTimes] = []
                try:
                    for _ in range(args.warmup):
                        await submit_one(session, c, watcher, deadline)
                    cpu_before = daemon_cpu(c)
                    for _ in range(args.jobs):
                        samples.append((await submit_one(session, c, watcher, deadline))[1])
                    cpu_ms = {
                        name: (after - cpu_before[name]) * 1000 / args.jobs for name, after in daemon_cpu(c).items()
                    }
                except BenchError as e:
                    raise BenchError(
                        f"aborted after {time.perf_counter() - started:.1f}s"
                        f" ({len(samples)}/{args.jobs} measured jobs done): {e}"
                    ) from e

                # Baselines, with the daemons idle again.
                spawns = [await spawn_true() for _ in range(args.baseline)]
                health = f"{c.api}/health"
                rtts: list[float] = []
                for _ in range(args.baseline + 10):
                    t0 = time.perf_counter()
                    async with session.get(health) as r:
                        await r.read()
                    rtts.append(time.perf_counter() - t0)
                rtts = rtts[10:]  # the first few warm the path
            finally:
                await ws.close()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    results: dict[str, Summary] = {
        "submit_to_completed": summarize([s.terminal - s.before_post for s in samples]),
        "submit_http_201": summarize([s.after_post - s.before_post for s in samples]),
        "submit_to_running_event": summarize([s.running - s.before_post for s in samples if not math.isnan(s.running)]),
        "running_to_completed_event": summarize([s.terminal - s.running for s in samples if not math.isnan(s.running)]),
        "spawn_sh_true": summarize(spawns),
        "http_rtt_health": summarize(rtts),
    }
    headline = results["submit_to_completed"]
    return {
        "benchmark": "submit_latency",
        "unit": "ms",
        "jobs": args.jobs,
        "warmup": args.warmup,
        "baseline_samples": args.baseline,
        "target_p50_ms": TARGET_P50_MS,
        "results": {name: s.as_dict() for name, s in results.items()},
        "ratios_p50": {
            "submit_to_completed_over_spawn": round(ratio(headline.p50, results["spawn_sh_true"].p50), 2),
            "submit_to_completed_over_http_rtt": round(ratio(headline.p50, results["http_rtt_health"].p50), 2),
            "submit_to_completed_over_target": round(ratio(headline.p50, TARGET_P50_MS), 2),
        },
        "cpu_ms_per_job": {name: round(value, 3) for name, value in cpu_ms.items()},
        "advertise_host": args.advertise_host,
        "host": host,
        "_summaries": results,
    }


LABELS = {
    "submit_to_completed": "submit → completed (WS event)",
    "submit_http_201": "  of which POST → 201",
    "submit_to_running_event": "  submit → running (WS event)",
    "running_to_completed_event": "  running → completed (WS event)",
    "spawn_sh_true": "baseline: spawn /bin/sh -c true",
    "http_rtt_health": "baseline: HTTP RTT GET /api/health",
}


def render(report: dict[str, Any]) -> str:
    summaries: dict[str, Summary] = report["_summaries"]
    r = report["ratios_p50"]
    cpu = report["cpu_ms_per_job"]
    host = report["host"]
    lines = [
        f"submit latency: {report['jobs']} sequential one-step jobs (run: true), {report['warmup']} warm-up, "
        f"1 coordinator + 1 agent on loopback",
        "",
        table([(LABELS[name], s) for name, s in summaries.items()]),
        "",
        f"p50 ratios: submit→completed / spawn = {r['submit_to_completed_over_spawn']:.1f}x, "
        f"/ HTTP RTT = {r['submit_to_completed_over_http_rtt']:.1f}x, "
        f"/ {TARGET_P50_MS:g} ms target = {r['submit_to_completed_over_target']:.1f}x",
        f"CPU per job (user+system, the job's own process excluded): coordinator {cpu['coordinator']:.2f} ms,"
        f" agent {cpu['agent']:.2f} ms",
        f"agent advertised at {report['advertise_host'] or 'its listen address'}",
        f"host: {host['cpus']} CPUs, load {host['load_average_1m']}, Python {host['python']}, git {host['git']}",
    ]
    warning = busy_host_warning_from(host)
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=200, help="measured jobs (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up jobs, not counted (default 10)")
    parser.add_argument("--baseline", type=int, default=200, help="samples per baseline (default 200)")
    parser.add_argument("--timeout", type=float, default=120.0, help="abort the job loop after this many seconds")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--log-level", default="warning", help="daemons' RUSTCI_LOG_LEVEL (default warning)")
    parser.add_argument(
        "--advertise-host",
        default=None,
        help="the agent's RUSTCI_ADVERTISE_HOST, e.g. 127.0.0.9 (nothing listens there: an agent behind NAT)",
    )
    parser.add_argument("--keep-state", action="store_true", help="keep the temp state dirs and daemon logs")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.warmup < 0 or args.baseline < 1 or args.timeout <= 0:
        parser.error("--jobs and --baseline must be ≥ 1, --warmup ≥ 0, --timeout > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return main_for("bench_submit_latency", parse_args(argv), measure, render)


if __name__ == "__main__":
    sys.exit(main())
