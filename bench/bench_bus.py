"""What crossing coordinators costs: a call and a wake-up through the fleet bus (``coordinator.bus``) on a real
PostgreSQL server, against a plain round trip to the same server measured in the same run.

Starts a throwaway PostgreSQL cluster on loopback (``tests/postgres_support.py``), opens two buses on one
database (coordinator A asks, coordinator B holds the runner's channel and answers at once), then times, one
after another:

- baseline: ``SELECT 1`` on a pooled connection (one database round trip);
- lookup: finding the channel's holder (``coordinator_channels`` and its liveness, one query);
- forwarded call: ``PostgresBus.call`` from A until B's answer is back (lookup, NOTIFY to B, NOTIFY back);
- wake-up: ``PostgresBus.wake`` on A until B's dispatcher hook runs (lookup, one NOTIFY).

A job submitted through the coordinator without the channel pays one wake-up more than one submitted through
the holder; the issue's target for that difference is 2 ms at p50.

    python bench/bench_bus.py [--calls N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BenchError, host_info, main_for, ratio, summarize, table


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from coordinator.bus import BusHandlers, PostgresBus
    from tests import postgres_support
    from tests.fleet.pg import fleet_database

    problem = postgres_support.postgres_problem()
    if problem is not None:
        raise BenchError(problem)
    with postgres_support.cluster() as server:
        url = server.create_database()
        async with fleet_database(url) as pool:
            a, b = PostgresBus(pool), PostgresBus(pool)
            woken: asyncio.Queue[str] = asyncio.Queue()

            async def answer(runner_id: str, kind: str, body: Any, timeout: float) -> Any:
                return {"ok": True}

            b.handlers = BusHandlers(call=answer, wake=woken.put_nowait)
            await a.open()
            await b.open()
            try:
                b.channel_opened("runner_1")
                deadline = time.monotonic() + 10
                while await a.holder("runner_1") is None:
                    if time.monotonic() > deadline:
                        raise BenchError("the channel's record never appeared")
                    await asyncio.sleep(0.01)
                samples: dict[str, list[float]] = {"baseline": [], "lookup": [], "call": [], "wake": []}
                for _ in range(args.calls):
                    start = time.perf_counter()
                    async with pool.connection() as conn:
                        await conn.fetchval("SELECT 1")
                    samples["baseline"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    await a.holder("runner_1")
                    samples["lookup"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    await a.call("runner_1", "status", None, 5.0)
                    samples["call"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    a.wake("runner_1")
                    await asyncio.wait_for(woken.get(), 5)
                    samples["wake"].append(time.perf_counter() - start)
            finally:
                await a.close()
                await b.close()
    summaries = {name: summarize(values) for name, values in samples.items()}
    return {
        "host": host_info(),
        "calls": args.calls,
        **{name: s.as_dict() for name, s in summaries.items()},
        "call_over_baseline_p50": round(ratio(summaries["call"].p50, summaries["baseline"].p50), 2),
        "wake_over_baseline_p50": round(ratio(summaries["wake"].p50, summaries["baseline"].p50), 2),
        "_summaries": summaries,
    }


def render(report: dict[str, Any]) -> str:
    summaries = report["_summaries"]
    rows = [
        ("SELECT 1 (baseline)", summaries["baseline"]),
        ("holder lookup", summaries["lookup"]),
        ("forwarded call", summaries["call"]),
        ("wake-up", summaries["wake"]),
    ]
    return (
        table(rows)
        + f"\nforwarded call p50 = {report['call_over_baseline_p50']}x a round trip;"
        + f" wake-up p50 = {report['wake_over_baseline_p50']}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    return main_for("bench_bus", parser.parse_args(), measure, render)


if __name__ == "__main__":
    sys.exit(main())
