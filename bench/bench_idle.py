"""Idle footprint: resident memory of a coordinator and an agent (native executor) that have started, registered
and settled, beside a bare aiohttp process; and each daemon's import time (``python -X importtime``).

    python bench/bench_idle.py [--settle S] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import psutil

from bench.bench_reads import start_bare, stop_bare
from bench.common import HOST, REPO, cluster, free_port, main_for, poll_until, ratio


def import_time(module: str) -> tuple[float, int]:
    """Milliseconds ``import module`` takes in a fresh interpreter, and how many modules it loads."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}, sys; print(len(sys.modules))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    total = sum(int(m) for m in re.findall(r"import time:\s+(\d+) \|", out.stderr))
    return total / 1000.0, int(out.stdout.strip() or 0)


def rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    imports = {m: await asyncio.to_thread(import_time, m) for m in ("coordinator.cli", "agent.cli", "aiohttp.web")}
    port = free_port()
    bare = start_bare(port)
    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                try:
                    async with session.get(f"http://{HOST}:{port}/x") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await poll_until(up, 30, "the bare handler")
        async with cluster() as c:
            await asyncio.sleep(args.settle)  # idle is what the daemons settle to after start: a timed wait
            rss = {
                "coordinator": rss_mb(c.coordinator.pid or 0),
                "agent": rss_mb(c.agent.pid or 0),
                "bare_aiohttp": rss_mb(bare.pid),
            }
    finally:
        await asyncio.to_thread(stop_bare, bare)
    return {
        "rss_mb": rss,
        "coordinator_vs_bare": round(ratio(rss["coordinator"], rss["bare_aiohttp"]), 2),
        "agent_vs_bare": round(ratio(rss["agent"], rss["bare_aiohttp"]), 2),
        "import_ms": {m: round(t, 1) for m, (t, _) in imports.items()},
        "modules": {m: n for m, (_, n) in imports.items()},
    }


def render(report: dict[str, Any]) -> str:
    lines = ["idle RSS (MB):"]
    for name, value in report["rss_mb"].items():
        lines.append(f"  {name:<13} {value:>6}")
    lines.append(f"  coordinator/bare {report['coordinator_vs_bare']}, agent/bare {report['agent_vs_bare']}")
    lines.append("import time (-X importtime, sum of self times):")
    for module, ms in report["import_ms"].items():
        lines.append(f"  {module:<16} {ms:>7} ms  {report['modules'][module]} modules")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds the daemons idle before measuring")
    parser.add_argument("--json", action="store_true")
    return main_for("bench_idle", parser.parse_args(), measure, render)


if __name__ == "__main__":
    sys.exit(main())
