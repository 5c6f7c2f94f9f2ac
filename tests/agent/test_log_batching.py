"""Log lines travel in batches by size and time: a busy step costs a frame per ``BATCH_DELAY``, not per line.

A real in-process agent and coordinator on loopback; the counts are the agent shipper's own.
"""

from __future__ import annotations

import sys
import time

from agent.shipping import BATCH_DELAY
from tests.agent.test_log_delivery import JOB_SYSTEM_ENTRIES, numbers, stored, submit
from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL

LINES = 1000


async def test_lines_printed_faster_than_the_delay_share_frames(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    # A line every millisecond or so: ten or more lines per BATCH_DELAY.
    script = f"import time\nfor i in range(1, {LINES + 1}):\n    print(i, flush=True)\n    time.sleep(0.001)"
    before = agent.shipper.batches_sent
    started = time.monotonic()
    job_id = await submit(coordinator.api, runner_id, f"{sys.executable} -c '{script}'")
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL, timeout=60)
    elapsed = time.monotonic() - started
    assert job["status"] == "completed"
    frames = agent.shipper.batches_sent - before
    # At most one frame per BATCH_DELAY (plus the few the job's own transitions send at once).
    assert frames <= elapsed / BATCH_DELAY + 10, (frames, elapsed)
    assert frames < LINES // 3
    # And nothing lost, in order, once each.
    rows = await stored(coordinator, job_id)
    assert numbers(rows) == list(range(1, LINES + 1))
    assert len(rows) == LINES + JOB_SYSTEM_ENTRIES
