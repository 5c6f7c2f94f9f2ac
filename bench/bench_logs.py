"""Log throughput and live-follow delay through a real coordinator and a real agent, on one host.

Starts ``python -m coordinator`` and ``python -m agent`` as subprocesses on loopback (``bench/common.py``) and
measures, in one run:

- throughput: one step prints 100 MB in 100-byte lines (``yes | head -c``); timed from the submit (and from
  the job's own start) until the coordinator has stored every entry. The job's final event is spooled after
  its last line and applied in order, so "job completed on the coordinator" means "every line stored"; the
  stored count is checked afterwards. Peak RSS of both daemons is sampled meanwhile, and their CPU time
  (user + system) is taken before and after, per line and as a share of a core.
- follow delay: a step prints a timestamped line every 20 ms (200 lines) while a client follows the runner's
  log (``GET /logs?follow=true``, Server-Sent Events); delay = receive time minus the time printed in the line.

Baselines in the same run: the same 100 MB step into ``/dev/null`` (``sh -c '... > /dev/null'``), the same
step through a raw pipe read to its end by this process (what an executor minimally does), and an HTTP round
trip (``GET /api/health`` on a kept-alive connection).

Targets (checked and printed): stored end to end at >= 50 MB/s; the follower's p50 <= 30 ms; the agent's RSS
<= 100 MB throughout the 100 MB step.

    python bench/bench_logs.py [--megabytes N] [--ticks N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import datetime
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
    summarize,
)

LINE = 100  # bytes per printed line, newline included
TERMINAL = frozenset({"completed", "failed", "timed_out", "cancelled"})
SYSTEM_ENTRIES = 4  # Job started, Step started, Step completed, Job completed


def flood(total: int) -> str:
    return f"yes \"$(printf '%0{LINE - 1}d' 0)\" | head -c {total}"


def ticker(count: int, directory: Path) -> str:
    script = directory / "ticker.py"
    script.write_text(
        f"import time\nfor i in range({count}):\n    print(f'tick {{i}} {{time.time():.6f}}', flush=True)\n"
        "    time.sleep(0.02)\n"
    )
    return f"{sys.executable} {script}"


# --- measurements ------------------------------------------------------------------------------------------


async def submit(session: aiohttp.ClientSession, c: Cluster, run: str) -> str:
    body = {"name": "bench-logs", "steps": [{"name": "print", "run": run}]}
    async with session.post(f"{c.api}/runners/{c.runner_id}/jobs", json=body, headers=c.headers) as r:
        answer = await r.json(content_type=None)
        if r.status != 201:
            raise BenchError(f"submit answered {r.status}: {answer}")
    return str(answer["job_id"])


async def job(session: aiohttp.ClientSession, c: Cluster, job_id: str) -> dict[str, Any]:
    async with session.get(f"{c.api}/runners/{c.runner_id}/jobs/{job_id}", headers=c.headers) as r:
        return dict(await r.json(content_type=None))


TARGET_MB_PER_S = 50.0
TARGET_FOLLOW_P50_MS = 30.0
TARGET_AGENT_RSS_MB = 100.0


class PeakRss:
    def __init__(self, *pids: int | None) -> None:
        self._procs = [psutil.Process(pid) for pid in pids if pid is not None]
        self.base = [p.memory_info().rss for p in self._procs]
        self.peak = list(self.base)

    def sample(self) -> None:
        for i, proc in enumerate(self._procs):
            self.peak[i] = max(self.peak[i], proc.memory_info().rss)

    def grown_mb(self) -> list[float]:
        return [round((peak - base) / 1e6, 1) for peak, base in zip(self.peak, self.base, strict=True)]

    def peak_mb(self) -> list[float]:
        return [round(peak / 1e6, 1) for peak in self.peak]

    def cpu_seconds(self) -> list[float]:
        """User + system CPU time of each process so far."""
        return [sum(proc.cpu_times()[:2]) for proc in self._procs]


async def throughput(session: aiohttp.ClientSession, c: Cluster, total: int, deadline: float) -> dict[str, Any]:
    rss = PeakRss(c.agent.pid, c.coordinator.pid)
    cpu0 = rss.cpu_seconds()
    t0 = time.perf_counter()
    wall0 = time.time()
    job_id = await submit(session, c, flood(total))
    while True:
        c.coordinator.check_alive()
        c.agent.check_alive()
        rss.sample()
        state = await job(session, c, job_id)
        if state["status"] in TERMINAL:
            break
        if time.perf_counter() > deadline:
            raise BenchError(f"time budget exhausted with the {total / 1e6:g} MB job still {state['status']}")
        await asyncio.sleep(0.02)  # the sampling period of the RSS and the job's state
    elapsed = time.perf_counter() - t0
    cpu = [after - before for after, before in zip(rss.cpu_seconds(), cpu0, strict=True)]
    done_wall = wall0 + elapsed
    if state["status"] != "completed":
        raise BenchError(f"the flood job ended {state['status']}: {state.get('reason')}")
    started = datetime.fromisoformat(state["started_at"].replace("Z", "+00:00")).timestamp()
    async with session.get(
        f"{c.api}/runners/{c.runner_id}/logs", params={"job_id": job_id, "limit": 1}, headers=c.headers
    ) as r:
        stored = int((await r.json())["total_count"])
    lines = total // LINE
    if stored != lines + SYSTEM_ENTRIES:
        raise BenchError(f"stored {stored} entries, expected {lines + SYSTEM_ENTRIES}: entries were lost")
    from_start = done_wall - started
    return {
        "bytes": total,
        "lines": lines,
        "submit_to_stored_s": round(elapsed, 3),
        "job_start_to_stored_s": round(from_start, 3),
        "mb_per_s": round(total / 1e6 / from_start, 2),
        "lines_per_s": round(lines / from_start),
        "peak_rss_growth_mb": dict(zip(("agent", "coordinator"), rss.grown_mb(), strict=True)),
        "peak_rss_mb": dict(zip(("agent", "coordinator"), rss.peak_mb(), strict=True)),
        # The agent's figure includes reading the step's output (the step's own processes are not counted).
        "cpu_us_per_line": dict(zip(("agent", "coordinator"), (round(s / lines * 1e6, 2) for s in cpu), strict=True)),
        "cpu_share_of_a_core": dict(zip(("agent", "coordinator"), (round(s / elapsed, 2) for s in cpu), strict=True)),
    }


async def pipe_read(total: int) -> float:
    """The same step's output through a pipe, read to its end by this process in 64 KiB reads."""
    t0 = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        flood(total),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    read = 0
    while chunk := await process.stdout.read(64 * 1024):
        read += len(chunk)
    if await process.wait() != 0 or read != total:
        raise BenchError(f"the raw pipe baseline failed ({read} of {total} bytes read)")
    return time.perf_counter() - t0


async def raw_pipe(total: int) -> float:
    """The same step's output written straight to /dev/null, the way the executor starts it."""
    t0 = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", f"{flood(total)} > /dev/null", stdin=asyncio.subprocess.DEVNULL, start_new_session=True
    )
    if await process.wait() != 0:
        raise BenchError("the raw pipe baseline failed")
    return time.perf_counter() - t0


async def follow_delay(
    session: aiohttp.ClientSession, c: Cluster, ticks: int, directory: Path, deadline: float
) -> list[float]:
    delays: list[float] = []
    url = f"{c.api}/runners/{c.runner_id}/logs"
    async with session.get(url, params={"follow": "true", "limit": 1}, headers=c.headers) as stream:
        if stream.status != 200:
            raise BenchError(f"follow answered {stream.status}")
        await submit(session, c, ticker(ticks, directory))
        try:
            async with asyncio.timeout(max(deadline - time.perf_counter(), 0)):
                async for raw in stream.content:
                    received = time.time()
                    if not raw.startswith(b"data: "):
                        continue
                    message = json.loads(raw[6:])["message"]
                    if message.startswith("tick "):
                        delays.append(received - float(message.split()[2]))
                        if len(delays) == ticks:
                            break
        except TimeoutError:
            raise BenchError(f"time budget exhausted after {len(delays)}/{ticks} followed lines") from None
    return delays


async def http_rtt(session: aiohttp.ClientSession, c: Cluster, samples: int) -> list[float]:
    rtts = []
    for _ in range(samples + 10):
        t0 = time.perf_counter()
        async with session.get(f"{c.api}/health") as r:
            await r.read()
        rtts.append(time.perf_counter() - t0)
    return rtts[10:]  # the first few warm the path


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    host = host_info()
    total = args.megabytes * 1_000_000 // LINE * LINE
    with tempfile.TemporaryDirectory(prefix="rustci-bench-logs-") as tmp:
        # A spool large enough that the measurement is about throughput, never about dropping entries.
        config = Path(tmp) / "agent.yaml"
        config.write_text(f"log_spool_max_bytes: {4 * total + 64 * 1024 * 1024}\n")
        async with cluster(log_level=args.log_level, extra_agent_env={"RUSTCI_CONFIG": str(config)}) as c:
            deadline = time.perf_counter() + args.timeout
            connector = aiohttp.TCPConnector(limit=4, keepalive_timeout=120)
            async with aiohttp.ClientSession(connector=connector) as session:
                flow = await throughput(session, c, total, deadline)
                delays = await follow_delay(session, c, args.ticks, Path(tmp), deadline)
                rtts = await http_rtt(session, c, args.baseline)
        pipe = await raw_pipe(total)
        piped = await pipe_read(total)
    follow, rtt = summarize(delays), summarize(rtts)
    return {
        "benchmark": "logs",
        "throughput": flow,
        "baseline_raw_pipe": {"seconds": round(pipe, 3), "mb_per_s": round(total / 1e6 / pipe, 1)},
        "baseline_pipe_read": {"seconds": round(piped, 3), "mb_per_s": round(total / 1e6 / piped, 1)},
        "follow_delay_ms": follow.as_dict(),
        "baseline_http_rtt_ms": rtt.as_dict(),
        "ratios": {
            "raw_pipe_over_stored_throughput": round(ratio(flow["job_start_to_stored_s"], pipe), 1),
            "pipe_read_over_stored_throughput": round(ratio(flow["job_start_to_stored_s"], piped), 1),
            "follow_delay_p50_over_http_rtt_p50": round(ratio(follow.p50, rtt.p50), 1),
        },
        "targets": {
            "stored_mb_per_s": [TARGET_MB_PER_S, flow["mb_per_s"] >= TARGET_MB_PER_S],
            "follow_p50_ms": [TARGET_FOLLOW_P50_MS, follow.p50 <= TARGET_FOLLOW_P50_MS],
            "agent_peak_rss_mb": [TARGET_AGENT_RSS_MB, flow["peak_rss_mb"]["agent"] <= TARGET_AGENT_RSS_MB],
        },
        "host": host,
        "_summaries": (follow, rtt),
    }


def render(report: dict[str, Any]) -> str:
    flow, pipe, ratios, host = report["throughput"], report["baseline_raw_pipe"], report["ratios"], report["host"]
    piped, targets = report["baseline_pipe_read"], report["targets"]

    def met(name: str) -> str:
        return "met" if targets[name][1] else "MISSED"

    follow, rtt = report["_summaries"]

    def row(name: str, s: Summary) -> str:
        return f"  {name:<34} n={s.n:<4} p50 {s.p50:8.3f} ms   p90 {s.p90:8.3f} ms   max {s.max:8.3f} ms"

    lines = [
        f"log throughput: one step printing {flow['bytes'] / 1e6:g} MB in {LINE}-byte lines, stored on the"
        " coordinator (1 coordinator + 1 agent on loopback)",
        f"  job start → all stored   {flow['job_start_to_stored_s']:8.2f} s   {flow['mb_per_s']:7.2f} MB/s"
        f"   {flow['lines_per_s']:>9,} lines/s   (submit → stored {flow['submit_to_stored_s']:.2f} s)",
        f"  baseline: same step > /dev/null   {pipe['seconds']:8.2f} s   {pipe['mb_per_s']:7.1f} MB/s"
        f"   ({ratios['raw_pipe_over_stored_throughput']:g}x faster)",
        f"  baseline: same step, pipe read   {piped['seconds']:8.2f} s   {piped['mb_per_s']:7.1f} MB/s"
        f"   ({ratios['pipe_read_over_stored_throughput']:g}x faster)",
        f"  target ≥ {TARGET_MB_PER_S:g} MB/s: {met('stored_mb_per_s')}",
        f"  peak RSS: agent {flow['peak_rss_mb']['agent']} MB (+{flow['peak_rss_growth_mb']['agent']}),"
        f" coordinator {flow['peak_rss_mb']['coordinator']} MB (+{flow['peak_rss_growth_mb']['coordinator']});"
        f" target agent ≤ {TARGET_AGENT_RSS_MB:g} MB: {met('agent_peak_rss_mb')}",
        f"  CPU per line: agent {flow['cpu_us_per_line']['agent']} µs, coordinator"
        f" {flow['cpu_us_per_line']['coordinator']} µs (share of a core: agent"
        f" {flow['cpu_share_of_a_core']['agent']}, coordinator {flow['cpu_share_of_a_core']['coordinator']})",
        "",
        "live follow (SSE): a line every 20 ms, delay from print to the follower receiving it",
        row("print → follower", follow),
        row("baseline: HTTP RTT GET /api/health", rtt),
        f"  p50 ratio follow delay / HTTP RTT = {ratios['follow_delay_p50_over_http_rtt_p50']:g}x;"
        f" target p50 ≤ {TARGET_FOLLOW_P50_MS:g} ms: {met('follow_p50_ms')}",
        f"host: {host['cpus']} CPUs, load {host.get('load_average_1m')}, Python {host['python']},"
        f" git {host.get('git')}",
    ]
    warning = busy_host_warning_from(host)
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--megabytes", type=int, default=100, help="output of the throughput step (default 100)")
    parser.add_argument("--ticks", type=int, default=200, help="followed lines, one per 20 ms (default 200)")
    parser.add_argument("--baseline", type=int, default=200, help="HTTP round trips measured (default 200)")
    parser.add_argument("--timeout", type=float, default=300.0, help="abort after this many seconds (default 300)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--log-level", default="warning", help="daemons' RUSTCI_LOG_LEVEL (default warning)")
    args = parser.parse_args(argv)
    if args.megabytes < 1 or args.ticks < 1 or args.baseline < 1 or args.timeout <= 0:
        parser.error("--megabytes, --ticks and --baseline must be ≥ 1, --timeout > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return main_for("bench_logs", parse_args(argv), measure, render)


if __name__ == "__main__":
    sys.exit(main())
