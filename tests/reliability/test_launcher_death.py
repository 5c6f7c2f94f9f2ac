"""SIGKILL of ``rustci local up``: its children drain and end; the next ``up`` finishes the job, once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.helpers import Api, free_port, wait_for
from tests.reliability.common import job_output
from tests.rustci.test_local_up import StartLaunch, gone, launch

__all__ = ["launch"]  # the fixture, shared with the launcher's own tests


async def test_sigkill_of_the_launcher_leaves_nothing_running_and_loses_no_job(
    launch: StartLaunch, tmp_path: Path
) -> None:
    state, port, agent_port = tmp_path / "state", free_port(), free_port()
    first = launch(state, port, agent_port)
    banner = await first.banner()
    api = Api(f"http://127.0.0.1:{port}/api", banner.api_key)
    try:
        status, job = await api.post(
            f"/runners/{banner.runner_id}/jobs",
            {"name": "outlives", "steps": [{"name": "s", "run": "echo begin; sleep 1; echo end"}]},
        )
        assert status == 201, job
        job_id = job["job_id"]
        await api.wait_job(banner.runner_id, job_id, {"running", "completed"})

        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)

        async def all_gone() -> bool:
            return all(gone(pid) for pid in banner.pids.values())

        await wait_for(all_gone, 40, interval=0.05, what=f"the children {banner.pids} to end")
        # The ports are free again: the next launch gets them.
        second = launch(state, port, agent_port)
        again = await second.banner()
        assert again.runner_id == banner.runner_id
        await api.close()
        api = Api(f"http://127.0.0.1:{port}/api", again.api_key)
        finished = await api.wait_job(banner.runner_id, job_id, {"completed", "failed", "cancelled", "timed_out"})
        assert finished["status"] == "completed", finished
        assert await job_output(api, banner.runner_id, job_id) == ["begin", "end"]
    finally:
        await api.close()
