"""A load generator for ``bench_heartbeats --transport channel``: many simulated agents in one process, each
holding its own agent channel (``GET /api/runners/{id}/channel``, one WebSocket per runner) and heartbeating on it.

Run by the benchmark, not by hand::

    python -m bench.channel_load --url ws://127.0.0.1:PORT --runners FILE --first I --count N --interval S

1. Raises its ``RLIMIT_NOFILE`` to the hard limit and opens one channel per runner of its slice of ``FILE`` (one
   ``<id> <token>`` per line), at most ``--concurrency`` handshakes at a time, each greeted like an agent does
   (``hello``, then the coordinator's ``welcome``). Like an agent, each runner heartbeats from then on, every
   ``--interval`` seconds at its own random phase, with one fresh metric sample each time. Once every channel
   is open it prints ``{"connected": n, "connect_errors": [...], ...}`` on one line.
2. Waits for one line on stdin, ``{"measure_from": M, "until": T}`` (epoch seconds), and goes on beating
   until ``T``. A heartbeat's latency is its request/reply round trip on the channel (the coordinator answers
   each with a ``HeartbeatAck``), recorded for heartbeats due at or after ``M``.
3. Waits at most ``--grace`` seconds for the answers still due, prints the result as one JSON line, closes
   every channel and exits. Everything is bounded in time: a missing answer, an error frame or a channel that
   closes during the run is an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import heapq
import json
import math
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

HELLO = '{"id":0,"kind":"hello","body":{"host":"127.0.0.1","port":0,"capabilities":["bash"],"state":"running"}}'
BEAT = (
    '{"id":%d,"kind":"heartbeat","body":{"load":{"active_jobs":1,"queued_jobs":0,"cpu_usage":12.5,'
    '"memory_usage":40.0,"disk_usage":30.0},"state":"running","heartbeat_interval":%s,'
    '"samples":[{"at":"%s","cpu_usage":12.5,"memory_usage":40.0,"disk_usage":30.0,"active_jobs":1}]}}'
)


def raise_nofile() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Agent:
    runner_id: str
    ws: aiohttp.ClientWebSocketResponse
    sent: dict[int, tuple[float, bool]] = field(default_factory=dict)
    """Frame id -> (perf_counter at send, measured)."""
    ids: int = 0
    done: bool = False
    """The run is over: a close from here on is expected."""


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    measured_sent: int = 0
    answered: int = 0
    errors: list[str] = field(default_factory=list)
    closed: int = 0
    max_lag: float = 0.0
    error_count: int = 0
    outstanding: int = 0
    sending: bool = True
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once sending is over and every heartbeat sent was answered."""

    def error(self, text: str) -> None:
        """Count an error; the first few are kept word for word."""
        self.error_count += 1
        if len(self.errors) < 20:
            self.errors.append(text)


async def connect(
    session: aiohttp.ClientSession, url: str, runner_id: str, token: str, results: Results
) -> Agent | None:
    try:
        ws = await session.ws_connect(
            f"{url}/api/runners/{runner_id}/channel",
            headers={"Authorization": f"Bearer {token}"},
            heartbeat=30,  # as the agent does (agent.coordinator_client)
            compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5),
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        results.error(f"connect {runner_id}: {type(e).__name__}: {e}")
        return None
    try:
        await ws.send_str(HELLO)
        welcome = await ws.receive(timeout=120)
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        results.error(f"hello {runner_id}: {type(e).__name__}")
        await ws.close()
        return None
    if welcome.type is not aiohttp.WSMsgType.TEXT or json.loads(welcome.data).get("kind") != "reply":
        results.error(f"hello {runner_id}: {welcome.type.name} {str(welcome.data)[:200]}")
        await ws.close()
        return None
    return Agent(runner_id, ws)


async def read(agent: Agent, results: Results) -> None:
    """Every answer on one channel: match it to its request, record the round trip."""
    async for message in agent.ws:
        if message.type is not aiohttp.WSMsgType.TEXT:
            continue
        now = time.perf_counter()
        frame = json.loads(message.data)
        sent = agent.sent.pop(frame.get("id"), None)
        if sent is None:
            continue
        results.outstanding -= 1
        if not results.sending and results.outstanding == 0:
            results.drained.set()
        if frame.get("kind") != "reply":
            results.error(f"heartbeat {agent.runner_id}: {message.data[:300]}")
            continue
        results.answered += 1
        if sent[1]:
            results.latencies.append(now - sent[0])
    if not agent.done:
        results.closed += 1
        results.error(f"channel {agent.runner_id} closed during the run (code {agent.ws.close_code})")


class Scheduler:
    """One for the whole slice: each runner beats every ``interval`` s at its own random phase, from its
    connection on (as an agent does) until the plan's ``until``; the round trips of heartbeats sent from
    ``measure_from`` on are measured."""

    def __init__(self, interval: float, results: Results) -> None:
        self.interval = interval
        self.results = results
        self.agents: list[Agent] = []
        self.due: list[tuple[float, int]] = []
        self.measure_from = math.inf
        self.until = math.inf
        self.cpu_from: float | None = None
        self.wall_from = 0.0
        self.cpu_share = 0.0

    def add(self, agent: Agent) -> None:
        heapq.heappush(self.due, (time.time() + random.uniform(0, self.interval), len(self.agents)))
        self.agents.append(agent)

    def plan(self, measure_from: float, until: float) -> None:
        self.measure_from, self.until = measure_from, until

    async def run(self) -> None:
        results, due, interval_json = self.results, self.due, json.dumps(self.interval)
        while True:
            now = time.time()
            if now >= self.until:
                break
            if self.cpu_from is None and now >= self.measure_from:
                self.cpu_from, self.wall_from = time.process_time(), time.perf_counter()
            if not due or due[0][0] > now:
                await asyncio.sleep(min(due[0][0] - now if due else 0.05, 0.05, self.until - now))
                continue
            if now >= self.measure_from:
                results.max_lag = max(results.max_lag, now - due[0][0])
            at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            while due and due[0][0] <= now:
                at_time, n = heapq.heappop(due)
                heapq.heappush(due, (at_time + self.interval, n))
                agent = self.agents[n]
                if agent.ws.closed:
                    continue
                agent.ids += 1
                measured = at_time >= self.measure_from
                agent.sent[agent.ids] = (time.perf_counter(), measured)
                results.sent += 1
                results.outstanding += 1
                results.measured_sent += measured
                try:
                    await agent.ws.send_str(BEAT % (agent.ids, interval_json, at))
                except (ConnectionError, RuntimeError) as e:
                    agent.sent.pop(agent.ids, None)
                    results.outstanding -= 1
                    results.error(f"send {agent.runner_id}: {type(e).__name__}")
        if self.cpu_from is not None:
            self.cpu_share = (time.process_time() - self.cpu_from) / max(time.perf_counter() - self.wall_from, 1e-9)


async def main_async(args: argparse.Namespace, pairs: list[list[str]]) -> None:
    results = Results()
    scheduler = Scheduler(args.interval, results)
    beating = asyncio.create_task(scheduler.run())
    readers: list[asyncio.Task[None]] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(args.concurrency)

        async def one(runner_id: str, token: str) -> None:
            async with gate:
                agent = await connect(session, args.url, runner_id, token, results)
            if agent is not None:
                readers.append(asyncio.create_task(read(agent, results)))
                scheduler.add(agent)

        started = time.perf_counter()
        await asyncio.gather(*(one(i, t) for i, t in pairs))
        agents = scheduler.agents
        print(
            json.dumps(
                {
                    "connected": len(agents),
                    "connect_seconds": round(time.perf_counter() - started, 1),
                    "connect_errors": results.errors,
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                }
            ),
            flush=True,
        )
        results.errors, results.error_count = [], 0
        # The connections are long-lived: kept out of the collector's full passes (which would otherwise walk
        # them all and stall this loop for a noticeable time, counted as the server's latency).
        gc.freeze()
        line = await asyncio.to_thread(sys.stdin.readline)
        if line.strip():
            plan = json.loads(line)
            scheduler.plan(plan["measure_from"], plan["until"])
            await beating
        else:
            beating.cancel()
        results.sending = False
        if any(a.sent for a in agents):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(results.drained.wait(), args.grace)
        unanswered = sum(len(a.sent) for a in agents)
        if unanswered:
            results.error(f"{unanswered} heartbeat(s) unanswered after {args.grace:g} s")
            results.error_count += unanswered - 1
        for agent in agents:
            agent.done = True
        report = {
            "latencies": [round(s, 6) for s in results.latencies],
            "sent": results.sent,
            "measured_sent": results.measured_sent,
            "answered": results.answered,
            "unanswered": unanswered,
            "error_count": results.error_count,
            "errors": results.errors,
            "closed_early": results.closed,
            "max_scheduler_lag_ms": round(results.max_lag * 1000, 1),
            "cpu_share_of_one_core": round(scheduler.cpu_share, 3),
        }
        print(json.dumps(report), flush=True)
        closing = [asyncio.wait_for(a.ws.close(), 5) for a in agents]
        for chunk in range(0, len(closing), 500):
            await asyncio.gather(*closing[chunk : chunk + 500], return_exceptions=True)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="ws://host:port of the coordinator (or the bare server)")
    parser.add_argument("--runners", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in flight at once")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait for the last answers")
    args = parser.parse_args()
    raise_nofile()
    lines = Path(args.runners).read_text().split("\n")
    pairs = [line.split(" ") for line in lines if line][args.first : args.first + args.count]
    asyncio.run(main_async(args, pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
