"""Runner registry reads at fleet size: ``GET /api/runners/{id}`` and ``GET /api/runners?limit=50`` over 10,000
runners, loaded with ``wrk`` (its own process) at 16 connections, against a bare aiohttp JSON handler.

The coordinator runs as ``python -m coordinator`` on loopback; its database is seeded with the runners through
the store (the same insert registration makes) before it starts. Each request picks a random runner id, or a
random offset (with a status filter on every other request of the list run), from a Lua script.

    python bench/bench_reads.py [--runners N] [--seconds S] [--connections C] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.common import API_KEY, HOST, REGISTRATION_KEY, BenchError, Daemon, free_port, main_for, poll_until, ratio

BARE = """
import sys
from aiohttp import web
async def handler(request):
    if request.can_read_body:
        await request.json()
    return web.json_response({"id": request.match_info.get("x", ""), "status": "active", "port": 9000})
app = web.Application()
app.router.add_route("*", "/{x:.*}", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

LUA = """
local ids = {}
for line in io.lines("%(ids)s") do ids[#ids + 1] = line end
local mode = "%(mode)s"
local total = %(total)d
math.randomseed(os.time())
request = function()
  local path
  if mode == "detail" then
    path = "/api/runners/" .. ids[math.random(#ids)]
  elseif mode == "list" then
    local offset = math.random(0, total - 50)
    if math.random(2) == 1 then
      path = "/api/runners?limit=50&offset=" .. offset
    else
      path = "/api/runners?limit=50&status=active&offset=" .. math.random(0, total / 2)
    end
  else
    path = "/bare/" .. ids[math.random(#ids)]
  end
  return wrk.format("GET", path, {["X-API-Key"] = "%(key)s"})
end
"""


def seed(database: Path, count: int, interval: float = 3600.0, all_active: bool = False) -> list[tuple[str, str]]:
    """Insert ``count`` runners (two thirds active, the rest inactive, unless ``all_active``), through the
    store; returns their ids and tokens."""
    import logging

    import structlog

    from coordinator.store.base import RunnerRecord
    from coordinator.store.sqlite import SqliteStore
    from shared import ids

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def go() -> list[tuple[str, str]]:
        store = SqliteStore(database)
        await store.open()
        made: list[tuple[str, str]] = []
        now = time.time()
        try:
            for n in range(count):
                runner = RunnerRecord(
                    id=ids.new_runner_id(),
                    name=f"bench-{n}",
                    type="docker" if n % 4 == 0 else "native",
                    status="active" if all_active or n % 3 else "inactive",
                    host=HOST,
                    port=20000 + n % 40000,
                    token=ids.new_runner_token(),
                    registered_at=now,
                    last_seen=now,
                    heartbeat_interval=interval,
                    capabilities=["bash", "python"],
                    tags=["bench", f"rack-{n % 16}"],
                    metadata={"zone": f"z{n % 3}", "heartbeat_interval": interval},
                    resources={"cpu_cores": 4, "memory_mb": 8192},
                )
                await store.insert_runner(runner)
                made.append((runner.id, runner.token))
        finally:
            await store.close()
        return made

    return asyncio.run(go())


def bench_coordinator(root: Path, port: int) -> Daemon:
    """A coordinator subprocess on ``port`` with its state under ``root`` (seed its database before start)."""
    return Daemon(
        "coordinator",
        {
            "RUSTCI_STATE_DIR": str(root / "state"),
            "RUSTCI_LISTEN_HOST": HOST,
            "RUSTCI_LISTEN_PORT": str(port),
            "RUSTCI_API_KEY": API_KEY,
            "RUSTCI_REGISTRATION_KEY": REGISTRATION_KEY,
            "RUSTCI_LOG_LEVEL": "warning",
            "RUSTCI_RATE_LIMITS_ENABLED": "false",
        },
        root / "coordinator.log",
    )


def start_bare(port: int) -> subprocess.Popen[bytes]:
    """The baseline: a bare aiohttp JSON handler in its own process."""
    return subprocess.Popen([sys.executable, "-c", BARE, str(port)], stdout=subprocess.DEVNULL)


def stop_bare(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def warm(session: aiohttp.ClientSession, url: str, runner_ids: list[str], connections: int) -> None:
    queue = list(runner_ids)

    async def worker() -> None:
        while queue:
            async with session.get(url + queue.pop(), headers={"X-API-Key": API_KEY}) as r:
                if r.status != 200:
                    raise BenchError(f"GET runner answered {r.status}")
                await r.read()

    await asyncio.gather(*(worker() for _ in range(connections)))


def wrk(url: str, script: Path, seconds: int, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise BenchError(f"could not read wrk's output:\n{out}")
    latency = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": latency.get("50"),
        "p90_ms": latency.get("90"),
        "p99_ms": latency.get("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(0) if socket_errors else "",
    }


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (Debian: apt-get install wrk)")
    root = Path(tempfile.mkdtemp(prefix="rustci-bench-reads-"))
    port, bare_port = free_port(), free_port()
    coordinator = bench_coordinator(root, port)
    bare = start_bare(bare_port)
    try:
        started = time.perf_counter()
        runners = await asyncio.to_thread(seed, root / "state" / "coordinator.db", args.runners)
        runner_ids = [runner_id for runner_id, _ in runners]
        seeded = time.perf_counter() - started
        (root / "ids.txt").write_text("\n".join(runner_ids) + "\n")
        random.shuffle(runner_ids)
        coordinator.start()
        async with aiohttp.ClientSession() as session:

            async def up(url: str) -> bool:
                coordinator.check_alive()
                try:
                    async with session.get(url, headers={"X-API-Key": API_KEY}) as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await poll_until(lambda: up(f"http://{HOST}:{port}/api/health"), 30, "the coordinator")
            await poll_until(lambda: up(f"http://{HOST}:{bare_port}/x"), 30, "the bare handler")
            # Steady state: every runner read once (a live fleet's records are cached between heartbeats).
            started = time.perf_counter()
            await warm(session, f"http://{HOST}:{port}/api/runners/", runner_ids, args.connections)
            warmed = time.perf_counter() - started
        results: dict[str, Any] = {}
        for mode, target in (("bare", bare_port), ("detail", port), ("list", port)):
            script = root / f"{mode}.lua"
            values = {"ids": root / "ids.txt", "mode": mode, "total": args.runners, "key": API_KEY}
            script.write_text(LUA % values)
            results[mode] = await asyncio.to_thread(
                wrk, f"http://{HOST}:{target}", script, args.seconds, args.connections
            )
            coordinator.check_alive()
        return {
            "runners": args.runners,
            "seed_seconds": round(seeded, 1),
            "cold_detail_rps": round(len(runner_ids) / warmed),
            "connections": args.connections,
            "seconds": args.seconds,
            **results,
            "detail_vs_bare": round(ratio(results["detail"]["rps"], results["bare"]["rps"]), 3),
            "list_vs_bare": round(ratio(results["list"]["rps"], results["bare"]["rps"]), 3),
        }
    finally:
        await asyncio.to_thread(stop_bare, bare)
        await coordinator.stop()
        shutil.rmtree(root, ignore_errors=True)


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['runners']} runners, {report['connections']} connections, {report['seconds']} s each (wrk)"]
    for mode in ("bare", "detail", "list"):
        r = report[mode]
        lines.append(
            f"  {mode:<7} {r['rps']:>9.0f} req/s  p50 {r['p50_ms']:.2f} ms  p90 {r['p90_ms']:.2f} ms"
            f"  p99 {r['p99_ms']:.2f} ms  non-2xx {r['non_2xx']} {r['socket_errors']}"
        )
    lines.append(f"  first read of each runner (cache cold, aiohttp client): {report['cold_detail_rps']} req/s")
    lines.append(f"  detail/bare {report['detail_vs_bare']}, list/bare {report['list_vs_bare']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    return main_for("bench_reads", parser.parse_args(), measure, render)


if __name__ == "__main__":
    sys.exit(main())
