"""Baseline: Celery + Redis running the same one-step ``/bin/sh -c true`` job, on the same host, in the same run.

Starts ``redis-server`` on a free loopback port (no persistence) and a Celery worker (prefork, ``--concurrency``
processes), then measures (1) sequential submit → result latency, the client waiting on each result, and (2)
throughput of ``--jobs`` tasks with at most ``--in-flight`` outstanding. Needs the ``bench`` extra
(``pip install -e '.[bench]'``) and ``redis-server`` on the PATH.

    python bench/bench_celery.py [--latency-jobs 200] [--jobs 3000] [--concurrency 8] [--json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import HOST, REPO, free_port, host_info, summarize, table


@contextlib.contextmanager
def redis_and_worker(concurrency: int) -> Iterator[str]:
    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    root = Path(tempfile.mkdtemp(prefix="rustci-bench-celery-"))
    port = free_port()
    url = f"redis://{HOST}:{port}/0"
    redis = subprocess.Popen(
        [redis_server, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        env = {**os.environ, "RUSTCI_BENCH_REDIS": url, "PYTHONPATH": str(REPO)}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.celery_tasks",
                "worker",
                "--pool=prefork",
                f"--concurrency={concurrency}",
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            env=env,
            cwd=REPO,
            stdout=open(root / "worker.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        os.environ["RUSTCI_BENCH_REDIS"] = url
        yield url
    finally:
        for proc in (worker, redis):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        shutil.rmtree(root, ignore_errors=True)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    host = host_info()
    with redis_and_worker(args.concurrency):
        from bench import celery_tasks

        celery_tasks.app.conf.broker_url = celery_tasks.app.conf.result_backend = os.environ["RUSTCI_BENCH_REDIS"]
        task = celery_tasks.run_true
        task.delay().get(timeout=60)  # the worker is up
        for _ in range(10):
            task.delay().get(timeout=30)
        latencies = []
        for _ in range(args.latency_jobs):
            t0 = time.perf_counter()
            task.delay().get(timeout=30)
            latencies.append(time.perf_counter() - t0)
        # Throughput: at most ``in_flight`` outstanding, each result collected once.
        pending: collections.deque[Any] = collections.deque()
        collected = 0
        started = time.perf_counter()
        for _ in range(args.jobs):
            if len(pending) >= args.in_flight:
                pending.popleft().get(timeout=60)
                collected += 1
            pending.append(task.delay())
        while pending:
            pending.popleft().get(timeout=60)
            collected += 1
        took = time.perf_counter() - started
    lat = summarize(latencies)
    return {
        "benchmark": "celery_baseline",
        "latency": lat.as_dict(),
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "in_flight": args.in_flight,
        "jobs_per_s": round(args.jobs / took, 1),
        "collected": collected,
        "host": host,
        "_latency": lat,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        import celery  # noqa: F401
    except ImportError:
        print("bench_celery: skipped, Celery is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 0
    report = measure(args)
    if args.json:
        import json

        print(json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, indent=2))
    else:
        print(table([("celery+redis: submit → result", report["_latency"])]))
        print(
            f"celery+redis throughput: {report['jobs_per_s']:.0f} jobs/s ({report['jobs']} tasks,"
            f" concurrency {report['concurrency']}, at most {report['in_flight']} in flight)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
