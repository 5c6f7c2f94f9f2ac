"""The coordinator's state on a small tmpfs that fills up: a clear 503, health ``degraded``, nothing lost, and
recovery by itself once space returns."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.conftest import API_KEY, StartAgentProcess
from tests.helpers import TERMINAL, Api, DaemonProcess, assert_error, free_port, wait_for, wait_process_runner
from tests.reliability.common import job_output

TMPFS_SIZE = "8m"


def _fill(directory: Path) -> Path:
    """Write a filler file until the file system is full; returns it (removing it gives the space back)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (256 * 1024, 4096, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)
    return filler


@pytest.fixture
async def small_disk(tmp_path: Path) -> AsyncIterator[Path]:
    """``tmp_path/coordinator-proc`` (the ``coordinator_process`` state directory) as a tmpfs of 8 MiB."""
    mount_point = tmp_path / "coordinator-proc"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = await asyncio.to_thread(
        subprocess.run, ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)]
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount_point
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(mount_point)])


async def test_a_full_disk_answers_503_turns_health_degraded_loses_nothing_and_recovers(
    small_disk: Path,
    coordinator_process: Callable[..., DaemonProcess],
    agent_process: StartAgentProcess,
) -> None:
    port = free_port()
    coordinator = coordinator_process(port)
    url = f"http://127.0.0.1:{port}"
    api = Api(f"{url}/api", API_KEY)
    public = Api(f"{url}/api", None)
    try:
        await wait_for(lambda: _health(public), 20, what="the coordinator to answer")
        agent = agent_process(url)
        runner_id = await wait_process_runner(api, agent)
        before = await _submit(api, runner_id, "before", "echo before")
        await api.wait_job(runner_id, before, {"completed"})

        filler = await asyncio.to_thread(_fill, small_disk)
        # Keep trying: SQLite may still find room in pages it already has before a write needs more.
        refused: list[tuple[int, object]] = []

        async def refused_submission() -> bool:
            status, body = await api.post(f"/runners/{runner_id}/jobs", _job("during", "echo x" * 2000))
            if status == 201:
                accepted.append(str(body["job_id"]))
                return False
            refused.append((status, body))
            return True

        accepted: list[str] = []
        await wait_for(refused_submission, 30, interval=0.05, what="a submission refused for lack of space")
        status, body = refused[-1]
        assert_error(status, body, 503, "STORAGE_UNAVAILABLE")
        health = await _health(public)
        assert health["status"] == "degraded", health
        assert coordinator.alive()

        os.unlink(filler)  # space returns
        await wait_for(lambda: _status_is(public, "ok"), 20, what="health to turn ok by itself")
        after = await _submit(api, runner_id, "after", "echo after")
        # Every job accepted before, during and after the outage ends exactly once, with its output once.
        for job_id in [before, *accepted, after]:
            job = await api.wait_job(runner_id, job_id, TERMINAL, timeout=60)
            assert job["status"] == "completed", job
        status, listed = await api.get(f"/runners/{runner_id}/jobs?limit=1000")
        assert status == 200
        ids = [j["job_id"] for j in listed["jobs"]]
        assert sorted(ids) == sorted({before, after, *accepted}), "a refused job was stored, or one was lost"
        assert await job_output(api, runner_id, after) == ["after"]
        assert await job_output(api, runner_id, before) == ["before"]
    finally:
        await api.close()
        await public.close()


def _job(name: str, run: str) -> dict[str, object]:
    return {"name": name, "steps": [{"name": "s", "run": run}]}


async def _submit(api: Api, runner_id: str, name: str, run: str) -> str:
    status, body = await api.post(f"/runners/{runner_id}/jobs", _job(name, run))
    assert status == 201, body
    return str(body["job_id"])


async def _health(api: Api) -> dict[str, object]:
    try:
        status, body = await api.get("/health")
    except OSError:
        return {}
    return body if status == 200 and isinstance(body, dict) else {}


async def _status_is(api: Api, wanted: str) -> bool:
    return (await _health(api)).get("status") == wanted
