"""A fleet's heartbeats: N simulated runners (default 10,000) each sending a heartbeat with a metric sample
every 10 s, over real HTTP, for a bounded time (default 30 s), against one ``python -m coordinator``.

The load comes from ``wrk`` (its own process) on ``--connections`` kept-alive connections, each paced by
wrk's ``delay`` hook so that together they send N/interval heartbeats a second (1,000/s at the defaults), each
for a random runner with its own token. Measured: the coordinator's CPU (user+system
time over the run, as a share of one core), its peak RSS, the heartbeat latency percentiles and the errors.
Baseline in the same run: the same load against a bare aiohttp handler that parses the JSON body.

    python bench/bench_heartbeats.py [--runners N] [--seconds S] [--interval S] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import psutil

from bench.bench_reads import bench_coordinator, seed, start_bare, stop_bare, wrk
from bench.common import HOST, free_port, main_for, poll_until, ratio


def beat(interval: float) -> dict[str, Any]:
    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {
        "load": {"active_jobs": 1, "queued_jobs": 0, "cpu_usage": 12.5, "memory_usage": 40.0, "disk_usage": 30.0},
        "state": "running",
        "heartbeat_interval": interval,
        "samples": [{"at": at, "cpu_usage": 12.5, "memory_usage": 40.0, "disk_usage": 30.0, "active_jobs": 1}],
    }


LUA = """
local runners = {}
for line in io.lines("%(file)s") do
  local id, token = line:match("([^ ]+) ([^ ]+)")
  runners[#runners + 1] = {id, token}
end
local body = '%(body)s'
math.randomseed(os.time())
request = function()
  local r = runners[math.random(#runners)]
  return wrk.format("POST", "/api/runners/" .. r[1] .. "/heartbeat",
    {["X-API-Key"] = r[2], ["Content-Type"] = "application/json"}, body)
end
delay = function() return %(delay_ms)d end
"""


async def load(base: str, script: Path, seconds: float, connections: int, pid: int) -> dict[str, Any]:
    """Run wrk (paced by the script's ``delay``) against ``base``; measure the server's CPU and peak RSS."""
    process = psutil.Process(pid)
    cpu0, t0 = sum(process.cpu_times()[:2]), time.perf_counter()
    peak_rss = process.memory_info().rss
    task = asyncio.create_task(asyncio.to_thread(wrk, base, script, int(seconds), connections))
    while not task.done():
        peak_rss = max(peak_rss, process.memory_info().rss)
        await asyncio.sleep(0.2)
    cpu, wall = sum(process.cpu_times()[:2]) - cpu0, time.perf_counter() - t0
    result = task.result()
    return {
        "rate_per_s": round(result["rps"]),
        "cpu_share_of_one_core": round(cpu / wall, 3),
        "cpu_ms_per_heartbeat": round(cpu / max(result["rps"] * wall, 1) * 1000, 3),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": result["non_2xx"],
        "socket_errors": result["socket_errors"],
    }


def start_profiler(pid: int, seconds: float, path: Path) -> subprocess.Popen[bytes]:
    """py-spy (``pip install py-spy``) sampling the coordinator for the measured run, as collapsed stacks."""
    command = ["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw", "-o", str(path)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="rustci-bench-heartbeats-"))
    port, bare_port = free_port(), free_port()
    coordinator = bench_coordinator(root, port)
    bare = start_bare(bare_port)
    try:
        runners = await asyncio.to_thread(seed, root / "state" / "coordinator.db", args.runners, args.interval, True)
        coordinator.start()
        async with aiohttp.ClientSession() as session:

            async def up(url: str) -> bool:
                coordinator.check_alive()
                try:
                    async with session.get(url) as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await poll_until(lambda: up(f"http://{HOST}:{port}/api/health"), 30, "the coordinator")
            await poll_until(lambda: up(f"http://{HOST}:{bare_port}/x"), 30, "the bare handler")
        (root / "runners.txt").write_text("".join(f"{i} {t}\n" for i, t in runners))
        script = root / "heartbeat.lua"
        delay_ms = int(1000 * args.connections * args.interval / args.runners)
        body = json.dumps(beat(args.interval))
        script.write_text(LUA % {"file": root / "runners.txt", "body": body, "delay_ms": delay_ms})
        base, ours = f"http://{HOST}:{bare_port}", f"http://{HOST}:{port}"
        baseline = await load(base, script, args.seconds, args.connections, bare.pid)
        # One interval unmeasured: every runner is heard from (and turns active again) before the measured run.
        await load(ours, script, args.interval, args.connections, coordinator.pid or 0)
        profiler = start_profiler(coordinator.pid or 0, args.seconds, args.profile) if args.profile else None
        measured = await load(ours, script, args.seconds, args.connections, coordinator.pid or 0)
        if profiler is not None:
            await asyncio.to_thread(profiler.wait, 60)
        coordinator.check_alive()
        return {
            "runners": args.runners,
            "interval_s": args.interval,
            "seconds": args.seconds,
            "bare": baseline,
            "coordinator": measured,
            "cpu_vs_bare": round(ratio(measured["cpu_share_of_one_core"], baseline["cpu_share_of_one_core"]), 2),
        }
    finally:
        await asyncio.to_thread(stop_bare, bare)
        await coordinator.stop()
        shutil.rmtree(root, ignore_errors=True)


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['runners']} runners every {report['interval_s']:g} s for {report['seconds']:g} s, HTTP"]
    for name in ("bare", "coordinator"):
        r = report[name]
        lines.append(
            f"  {name:<12} {r['rate_per_s']:>5}/s  CPU {r['cpu_share_of_one_core'] * 100:5.1f}% of a core"
            f" ({r['cpu_ms_per_heartbeat']} ms/heartbeat)  RSS {r['peak_rss_mb']} MB  p50 {r['p50_ms']} ms"
            f"  p99 {r['p99_ms']} ms  non-2xx {r['errors']} {r['socket_errors']}"
        )
    lines.append(f"  coordinator CPU / bare CPU: {report['cpu_vs_bare']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50, help="wrk connections, each paced")
    parser.add_argument("--profile", type=Path, help="write py-spy's collapsed stacks of the coordinator here")
    parser.add_argument("--json", action="store_true")
    return main_for("bench_heartbeats", parser.parse_args(), measure, render)


if __name__ == "__main__":
    sys.exit(main())
