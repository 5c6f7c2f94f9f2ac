"""Where a log line's CPU goes: each stage of the log path timed alone, in this process, per line.

``bench/bench_logs.py`` times the whole path (a real agent and coordinator); this script splits it into its
stages so a change can be aimed at the one that costs most. Each stage runs the production code on
``--lines`` 100-byte lines (in batches of ``--batch``, the size a busy step's batches have):

- agent: the step's output callback (mask, size policy, encode: ``agent.logsink``); the outbox's writer
  (one SQLite transaction per batch, one row per line: ``agent.shipping.Outbox``); the shipper's read of a
  batch and its acknowledgement (the rows joined in SQLite, then deleted).
- coordinator: validating an event batch from its JSON (``shared.models.EventBatch``); cutting its log
  entries into rows (``coordinator.store.events``); building chunks and their bodies
  (``coordinator.store.chunks.chunked``).

Baseline in the same run: ``json.loads`` of the same batch body (what any parse of the wire costs). The budget
for 50 MB/s of 100-byte lines is 500,000 lines/s: at most 2 µs of CPU per line per process.

    python bench/bench_log_stages.py [--lines N] [--batch N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import busy_host_warning_from, host_info, main_for, ratio

BUDGET_US = 2.0
"""CPU per line per process for 500,000 lines/s."""
TEXT = "0" * 99  # a 100-byte line without its newline


def _per_line(lines: int, started: float) -> float:
    return (time.perf_counter() - started) / lines * 1e6


async def agent_stages(lines: int, batch: int) -> dict[str, float]:
    from agent.logsink import JobLog
    from agent.shipping import Outbox
    from agent.store import AgentStore

    with tempfile.TemporaryDirectory() as tmp:
        store = AgentStore(Path(tmp) / "agent.db")
        await store.open()
        try:
            outbox = Outbox(store, lambda: SimpleNamespace(runner_id="runner_bench"))  # type: ignore[arg-type,return-value]
            sink = JobLog(outbox, "job_bench", 1, limit=1 << 62, tail=1 << 20).sink("print")
            started = time.perf_counter()
            for _ in range(lines):
                sink("stdout", TEXT)
            encode = _per_line(lines, started)
            bodies = outbox._lines
            started = time.perf_counter()
            for i in range(0, lines, batch):
                outbox._lines, outbox._lines_bytes = bodies[i : i + batch], 0
                await outbox.flush()
            write = _per_line(lines, started)
            started, after, shipped = time.perf_counter(), 0, 0
            while (pending := await outbox.pending_batch("runner_bench", after, limit=batch)) is not None:
                shipped, after = shipped + pending.count, pending.last_seq
                await outbox.acknowledge("runner_bench", after)
            read_ack = _per_line(lines, started)
            if shipped != lines:
                raise RuntimeError(f"shipped {shipped} of {lines} lines")
        finally:
            await store.close()
    return {"agent: split, mask, encode": encode, "agent: spool write": write, "agent: spool read + ack": read_ack}


def coordinator_stages(lines: int, batch: int) -> tuple[dict[str, float], float]:
    from coordinator.store.chunks import LEVELS, EpochSeconds, Run, chunked
    from shared import protocol
    from shared.models import EventBatch, LogEvent

    middle, end = protocol.log_template("job_bench", 1, "stdout", "print", "info")
    at = "2026-01-15T10:30:00.123Z"
    entry = (protocol.LOG_START + at + middle + json.dumps(TEXT) + end)[1:]
    body = '{"events":[' + ",".join(f'{{"seq":{seq},{entry}' for seq in range(1, batch + 1)) + "]}"
    rounds = max(1, lines // batch)

    def timed(stage: Callable[[], object]) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            stage()
        return _per_line(rounds * batch, started)

    events = EventBatch.model_validate_json(body).events

    def rows() -> list[Run]:
        epoch, run = EpochSeconds(), Run("job_bench", "print", [])
        for e in events:
            assert isinstance(e, LogEvent)
            run.rows.append([e.seq, epoch(e.at), LEVELS[e.level], e.stream, e.attempt, e.message])
        return [run]

    runs = rows()
    stages = {
        "coordinator: validate batch": timed(lambda: EventBatch.model_validate_json(body)),
        "coordinator: entries to rows": timed(rows),
        "coordinator: build chunks": timed(lambda: chunked(runs)),
    }
    return stages, timed(lambda: json.loads(body))


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    host = host_info()
    stages = await agent_stages(args.lines, args.batch)
    coordinator, loads = coordinator_stages(args.lines, args.batch)
    stages.update(coordinator)
    return {"lines": args.lines, "batch": args.batch, "stages_us": stages, "json_loads_us": loads, "host": host}


def render(result: dict[str, Any]) -> str:
    out = [
        f"log path stages: {result['lines']:,} lines of 100 bytes, batches of {result['batch']:,}; µs of CPU per line"
    ]
    loads = result["json_loads_us"]
    for name, us in result["stages_us"].items():
        out.append(
            f"  {name:<32} {us:7.2f} µs   ({ratio(us, loads):4.1f}x json.loads, {ratio(us, BUDGET_US):4.1f}x budget)"
        )
    agent = sum(us for name, us in result["stages_us"].items() if name.startswith("agent"))
    coordinator = sum(us for name, us in result["stages_us"].items() if name.startswith("coordinator"))
    out.append(f"  baseline: json.loads of the batch {loads:7.2f} µs")
    out.append(
        f"  agent {agent:.2f} µs, coordinator {coordinator:.2f} µs per line; budget {BUDGET_US:.0f} µs per process"
    )
    host = result["host"]
    out.append(f"host: {host.get('cpus')} CPUs, load {host.get('load_average_1m')}, Python {host.get('python')}")
    if warning := busy_host_warning_from(host):
        out.append(warning)
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=50_000, help="lines through each stage (default 50,000)")
    parser.add_argument("--batch", type=int, default=5_000, help="lines per batch (default 5,000)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.lines < 1 or not 1 <= args.batch <= 10_000:
        parser.error("--lines must be ≥ 1 and --batch between 1 and 10,000")
    return args


def main(argv: list[str] | None = None) -> int:
    return main_for("bench_log_stages", parse_args(argv), measure, render)


if __name__ == "__main__":
    sys.exit(main())
