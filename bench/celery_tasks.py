"""The Celery side of the baseline: one task that runs ``/bin/sh -c true`` as a job's step would.

Broker and result backend are the Redis at ``RUSTCI_BENCH_REDIS`` (started by ``bench/bench_celery.py``).
"""

from __future__ import annotations

import os
import subprocess

from celery import Celery

REDIS = os.environ.get("RUSTCI_BENCH_REDIS", "redis://127.0.0.1:6379/0")
app = Celery("rustci_bench", broker=REDIS, backend=REDIS)
app.conf.update(
    task_acks_late=False,
    worker_prefetch_multiplier=1,
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="run_true")  # type: ignore[untyped-decorator]
def run_true() -> int:
    return subprocess.run(["/bin/sh", "-c", "true"], stdin=subprocess.DEVNULL, capture_output=True).returncode
