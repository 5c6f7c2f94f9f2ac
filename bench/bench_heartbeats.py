"""A fleet's heartbeats: N simulated runners (default 10,000) each sending a heartbeat with a metric sample
every 10 s for a bounded time (default 60 s, after one unmeasured interval), against one ``python -m coordinator``,
over each transport an agent may use (``--transport``, both by default):

- ``http``: ``POST /api/runners/{id}/heartbeat`` from ``wrk`` (its own process) on ``--connections``
  kept-alive connections, each paced by wrk's ``delay`` hook so that together they send N/interval heartbeats
  a second (1,000/s at the defaults), each for a random runner with its own token. Baseline: the same load
  against a bare aiohttp handler that parses the JSON body.
- ``channel``: every runner holds its own agent channel (``GET /api/runners/{id}/channel``: N open WebSocket
  connections, from ``--load-processes`` loader processes, ``bench.channel_load``) and sends its heartbeats as
  frames on it; the latency is the frame's request/reply round trip (the coordinator acknowledges each).
  Baseline: the same connections and message rate against a bare aiohttp WebSocket server that parses each
  frame and answers it.

Measured: the server's CPU (user+system time over the measured run, as a share of one core), its peak RSS,
the heartbeat latency percentiles and the errors (non-2xx answers and socket errors; on the channel error
frames, unanswered heartbeats, failed connections and channels closed during the run). Every process started
here gets ``RLIMIT_NOFILE`` raised to the hard limit.

    python bench/bench_heartbeats.py [--transport http|channel|both] [--runners N] [--seconds S]
        [--interval S] [--profile PATH] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import psutil

from bench.bench_reads import bench_coordinator, seed, start_bare, stop_bare, wrk
from bench.channel_load import raise_nofile
from bench.common import HOST, REPO, BenchError, free_port, main_for, poll_until, ratio, summarize

BARE_CHANNEL = """
import json, resource, sys
from aiohttp import WSMsgType, web
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def channel(request):
    ws = web.WebSocketResponse(heartbeat=30)  # as the coordinator's channel
    await ws.prepare(request)
    runner_id = request.match_info["runner_id"]
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                frame = json.loads(message.data)
                body = {"runner_id": runner_id, "status": "active"}
                await ws.send_str(json.dumps({"id": frame["id"], "kind": "reply", "body": body}, separators=(",", ":")))
    except ConnectionError:  # the client went away mid-answer (as the coordinator's channel tolerates)
        pass
    return ws
async def ok(request):
    return web.json_response({})
app = web.Application()
app.router.add_get("/api/runners/{runner_id}/channel", channel)
app.router.add_get("/x", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


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
    beside = Path(sys.executable).with_name("py-spy")  # the venv's, when it is not on PATH
    command = [
        str(beside) if beside.exists() else "py-spy",
        "record",
        "-p",
        str(pid),
        "-d",
        str(int(seconds)),
        "-f",
        "raw",
        "-o",
        str(path),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()  # inherited by every process started here (the coordinator, the bare servers, the loaders)
    root = Path(tempfile.mkdtemp(prefix="rustci-bench-heartbeats-"))
    try:
        template = root / "seeded"
        template.mkdir()
        runners = await asyncio.to_thread(seed, template / "coordinator.db", args.runners, args.interval, True)
        (root / "runners.txt").write_text("".join(f"{i} {t}\n" for i, t in runners))
        report: dict[str, Any] = {
            "runners": args.runners,
            "interval_s": args.interval,
            "seconds": args.seconds,
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        }
        transports = ("http", "channel") if args.transport == "both" else (args.transport,)
        for transport in transports:
            run = root / transport
            (run / "state").mkdir(parents=True)
            for part in template.iterdir():
                shutil.copy(part, run / "state" / part.name)
            go = measure_http if transport == "http" else measure_channel
            report[transport] = await go(args, run, root / "runners.txt")
        return report
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def wait_up(urls: list[str], alive: Callable[[], None]) -> None:
    async with aiohttp.ClientSession() as session:
        for url in urls:

            async def up(url: str = url) -> bool:
                alive()
                try:
                    async with session.get(url) as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await poll_until(up, 30, url)


async def measure_http(args: argparse.Namespace, root: Path, runners: Path) -> dict[str, Any]:
    port, bare_port = free_port(), free_port()
    coordinator = bench_coordinator(root, port)
    bare = start_bare(bare_port)
    try:
        coordinator.start()
        await wait_up([f"http://{HOST}:{port}/api/health", f"http://{HOST}:{bare_port}/x"], coordinator.check_alive)
        script = root / "heartbeat.lua"
        delay_ms = int(1000 * args.connections * args.interval / args.runners)
        body = json.dumps(beat(args.interval))
        script.write_text(LUA % {"file": runners, "body": body, "delay_ms": delay_ms})
        base, ours = f"http://{HOST}:{bare_port}", f"http://{HOST}:{port}"
        baseline = await load(base, script, args.seconds, args.connections, bare.pid)
        print(f"http, bare: {json.dumps(baseline)}", file=sys.stderr)
        # One interval unmeasured: every runner is heard from (and turns active again) before the measured run.
        await load(ours, script, args.interval, args.connections, coordinator.pid or 0)
        profile = args.profile.with_suffix(".http.txt") if args.profile else None
        profiler = start_profiler(coordinator.pid or 0, args.seconds, profile) if profile else None
        measured = await load(ours, script, args.seconds, args.connections, coordinator.pid or 0)
        if profiler is not None:
            await asyncio.to_thread(profiler.wait, 60)
        coordinator.check_alive()
        return {
            "bare": baseline,
            "coordinator": measured,
            "cpu_vs_bare": round(ratio(measured["cpu_share_of_one_core"], baseline["cpu_share_of_one_core"]), 2),
        }
    finally:
        await asyncio.to_thread(stop_bare, bare)
        await coordinator.stop()


def start_bare_channel(port: int) -> subprocess.Popen[bytes]:
    """The channel's baseline: a bare aiohttp WebSocket server in its own process."""
    return subprocess.Popen([sys.executable, "-c", BARE_CHANNEL, str(port)], stdout=subprocess.DEVNULL)


async def measure_channel(args: argparse.Namespace, root: Path, runners: Path) -> dict[str, Any]:
    """Bare echo server first, then the coordinator, each with one open channel per runner."""
    bare_port = free_port()
    bare = start_bare_channel(bare_port)
    try:
        await wait_up([f"http://{HOST}:{bare_port}/x"], lambda: None)
        baseline = await channel_run(args, f"ws://{HOST}:{bare_port}", runners, bare.pid, None)
        print(f"channel, bare: {json.dumps(baseline)}", file=sys.stderr)
    finally:
        await asyncio.to_thread(stop_bare, bare)
    port = free_port()
    coordinator = bench_coordinator(root, port)
    try:
        coordinator.start()
        await wait_up([f"http://{HOST}:{port}/api/health"], coordinator.check_alive)
        profile = args.profile.with_suffix(".channel.txt") if args.profile else None
        measured = await channel_run(args, f"ws://{HOST}:{port}", runners, coordinator.pid or 0, profile)
        coordinator.check_alive()
    finally:
        await coordinator.stop()
    return {
        "connections": args.runners,
        "bare": baseline,
        "coordinator": measured,
        "cpu_vs_bare": round(ratio(measured["cpu_share_of_one_core"], baseline["cpu_share_of_one_core"]), 2),
    }


async def channel_run(
    args: argparse.Namespace, url: str, runners: Path, pid: int, profile: Path | None
) -> dict[str, Any]:
    """Open one channel per runner from ``--load-processes`` loaders, warm up for one interval, then measure
    ``--seconds`` of heartbeats: the server's CPU share and peak RSS, the round trips, every error."""
    server = psutil.Process(pid)
    share = -(-args.runners // args.load_processes)
    loaders = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.channel_load",
            *("--url", url, "--runners", str(runners), "--interval", str(args.interval)),
            *("--first", str(first), "--count", str(min(share, args.runners - first))),
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**26,  # a loader's report is one line with every round trip it measured
        )
        for first in range(0, args.runners, share)
    ]
    peak = {"rss": server.memory_info().rss}
    stop_sampling = asyncio.Event()

    async def sample_rss() -> None:
        while not stop_sampling.is_set():
            with contextlib.suppress(psutil.Error):
                peak["rss"] = max(peak["rss"], server.memory_info().rss)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), 0.2)

    sampler = asyncio.create_task(sample_rss())
    finished = False
    try:
        started = time.perf_counter()
        ready = [await _line(loader, args.connect_timeout) for loader in loaders]
        connect_seconds = time.perf_counter() - started
        connected = sum(r["connected"] for r in ready)
        connect_errors = [e for r in ready for e in r["connect_errors"]]
        measure_from = time.time() + args.interval  # one interval unmeasured: every runner beats once first
        until = measure_from + args.seconds
        plan = json.dumps({"measure_from": measure_from, "until": until}).encode() + b"\n"
        for loader in loaders:
            assert loader.stdin is not None
            loader.stdin.write(plan)
            await loader.stdin.drain()
        await asyncio.sleep(max(0.0, measure_from - time.time()))
        profiler = start_profiler(pid, args.seconds, profile) if profile else None
        cpu0 = sum(server.cpu_times()[:2])
        t0 = time.perf_counter()
        await asyncio.sleep(max(0.0, until - time.time()))
        cpu, wall = sum(server.cpu_times()[:2]) - cpu0, time.perf_counter() - t0
        rss_measured_end = server.memory_info().rss
        results = [await _line(loader, 60) for loader in loaders]
        if profiler is not None:
            await asyncio.to_thread(profiler.wait, 60)
        finished = True
    finally:
        stop_sampling.set()
        await sampler
        for loader in loaders:
            await _finish(loader, 60 if finished else 0)
    latencies = [s for r in results for s in r["latencies"]]
    summary = summarize(latencies)
    answered = len(latencies)
    errors = sum(r["error_count"] for r in results) + len(connect_errors) + (args.runners - connected)
    return {
        "connected": connected,
        "connect_seconds": round(connect_seconds, 1),
        "rate_per_s": round(answered / args.seconds),
        "cpu_share_of_one_core": round(cpu / wall, 3),
        "cpu_ms_per_heartbeat": round(cpu / max(answered, 1) * 1000, 3),
        "peak_rss_mb": round(peak["rss"] / 2**20, 1),
        "rss_at_end_mb": round(rss_measured_end / 2**20, 1),
        "p50_ms": round(summary.p50, 2),
        "p90_ms": round(summary.p90, 2),
        "p99_ms": round(summary.p99, 2),
        "max_ms": round(summary.max, 2),
        "errors": errors,
        "error_samples": (connect_errors + [e for r in results for e in r["errors"]])[:10],
        "loaders_cpu_share_of_one_core": round(sum(r["cpu_share_of_one_core"] for r in results), 3),
        "loader_max_scheduler_lag_ms": max(r["max_scheduler_lag_ms"] for r in results),
    }


async def _line(process: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    """The loader's next report line (JSON); BenchError if it exits or is silent for ``timeout`` s."""
    assert process.stdout is not None
    try:
        async with asyncio.timeout(timeout):
            line = await process.stdout.readline()
    except TimeoutError as e:
        raise BenchError(f"the channel loader (pid {process.pid}) said nothing for {timeout:g}s") from e
    if not line:
        raise BenchError(f"the channel loader (pid {process.pid}) exited with code {await process.wait()}")
    result: dict[str, Any] = json.loads(line)
    return result


async def _finish(process: asyncio.subprocess.Process, timeout: float) -> None:
    """Let a loader close its channels and exit (its stdin closed) within ``timeout`` s, else SIGKILL by PID."""
    if process.stdin is not None:
        with contextlib.suppress(ConnectionError):
            process.stdin.close()
    try:
        async with asyncio.timeout(timeout):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def render(report: dict[str, Any]) -> str:
    lines = []
    for transport in ("http", "channel"):
        if transport not in report:
            continue
        run = report[transport]
        how = "HTTP (wrk)" if transport == "http" else f"channel, {run['connections']} open connections"
        lines.append(f"{report['runners']} runners every {report['interval_s']:g} s for {report['seconds']:g} s, {how}")
        for name in ("bare", "coordinator"):
            r = run[name]
            errors = r["errors"] if transport == "channel" else f"{r['errors']} {r['socket_errors']}"
            lines.append(
                f"  {name:<12} {r['rate_per_s']:>5}/s  CPU {r['cpu_share_of_one_core'] * 100:5.1f}% of a core"
                f" ({r['cpu_ms_per_heartbeat']} ms/heartbeat)  RSS {r['peak_rss_mb']} MB  p50 {r['p50_ms']} ms"
                f"  p99 {r['p99_ms']} ms  errors {errors}"
            )
            if transport == "channel":
                lines.append(
                    f"  {'':<12} connected {r['connected']} in {r['connect_seconds']} s; loaders"
                    f" {r['loaders_cpu_share_of_one_core'] * 100:.1f}% of a core,"
                    f" lag ≤ {r['loader_max_scheduler_lag_ms']} ms"
                )
                for sample in r["error_samples"]:
                    lines.append(f"  {'':<12} error: {sample}")
        lines.append(f"  coordinator CPU / bare CPU: {run['cpu_vs_bare']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--transport", choices=("http", "channel", "both"), default="both")
    parser.add_argument("--connections", type=int, default=50, help="HTTP: wrk connections, each paced")
    parser.add_argument("--load-processes", type=int, default=2, help="channel: loader processes sharing the runners")
    parser.add_argument("--connect-timeout", type=float, default=900.0, help="channel: seconds to open every channel")
    parser.add_argument(
        "--profile", type=Path, help="write py-spy's collapsed stacks of the coordinator to PATH.<transport>.txt"
    )
    parser.add_argument("--json", action="store_true")
    return main_for("bench_heartbeats", parser.parse_args(), measure, render)


if __name__ == "__main__":
    sys.exit(main())
