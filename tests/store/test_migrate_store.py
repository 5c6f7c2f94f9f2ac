"""``rustci-coordinator migrate-store --to postgresql://...``: a SQLite coordinator's store, copied whole."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, submit_job

STATE_KEYS = ("admin-api-key", "registration-key", "jwt-secret", "secrets.key")


def _migrate(state_dir: Path, target: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RUSTCI_STATE_DIR": str(state_dir)}
    env.pop("RUSTCI_DATABASE", None)
    return subprocess.run(
        [sys.executable, "-m", "coordinator", "migrate-store", "--to", target],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


async def _finished_job(coordinator: CoordinatorHandle, runner_id: str) -> str:
    job_id = await submit_job(
        coordinator.api,
        runner_id,
        "copied",
        "echo one; echo two",
        environment={"TOKEN": "s3cret-value"},
        masked=["TOKEN"],
    )
    done = await coordinator.api.wait_job(runner_id, job_id, TERMINAL)
    assert done["status"] == "completed", done
    return job_id


async def test_runners_jobs_logs_and_keys_are_copied_into_an_empty_postgresql_database(
    coordinator: CoordinatorHandle, start_agent: StartAgent, postgres_url: str
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    await _finished_job(coordinator, runner_id)
    await agent.stop(timeout=5)
    await coordinator.stop()
    state_dir = coordinator.config.state_dir

    done = await asyncio.to_thread(_migrate, state_dir, postgres_url)
    assert done.returncode == 0, done.stderr
    assert "runners: 1 rows" in done.stdout and "jobs: 1 rows" in done.stdout, done.stdout

    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT id FROM runners") == runner_id
        job = await conn.fetchrow("SELECT status, spec FROM jobs")
        assert job is not None and job["status"] == "completed"
        assert "s3cret-value" not in job["spec"], "a masked value stays sealed in the copy"
        settings = {r["name"]: r["value"] for r in await conn.fetch("SELECT name, value FROM fleet_settings")}
        for name in STATE_KEYS:
            if (state_dir / name).is_file():
                assert settings[name] == (state_dir / name).read_text().strip()
        log_tables = [
            r["relname"]
            for r in await conn.fetch(
                "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'log%'"
                " AND relnamespace = 'public'::regnamespace"
            )
        ]
        copied_log_rows = sum([await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in log_tables])
        assert copied_log_rows > 0, "the job's log output is copied"
        # New rows get fresh ids after the copied ones (identity sequences moved past them).
        seq = await conn.fetchval("SELECT max(seq) FROM runners")
        new = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('runners', 'seq'))")
        assert new > seq
    finally:
        await conn.close()

    again = await asyncio.to_thread(_migrate, state_dir, postgres_url)
    assert again.returncode == 1
    assert "already holds" in again.stderr and "Traceback" not in again.stderr


async def test_a_wrong_target_or_a_missing_store_is_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    wrong = await asyncio.to_thread(_migrate, tmp_path, "mysql://root@127.0.0.1/db")
    assert wrong.returncode == 2 and "postgresql://" in wrong.stderr
    missing = await asyncio.to_thread(_migrate, tmp_path / "nowhere", "postgresql://u@127.0.0.1:1/db")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
