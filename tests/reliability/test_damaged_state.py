"""Damaged state files stop a daemon with one line naming the file and what to do, and exit status 4."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.statefiles import EXIT_DAMAGED_STATE
from tests.conftest import API_KEY, REGISTRATION_KEY, CoordinatorHandle, agent_env
from tests.helpers import REPO, free_port

GARBAGE = b"this is not what the daemon wrote\x00\xff" * 64


async def _run(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "RUSTCI_LOG_FORMAT": "json", **env}
    argv = [sys.executable, "-m", module]
    return await asyncio.to_thread(subprocess.run, argv, cwd=REPO, env=full, capture_output=True, text=True, timeout=60)


def _assert_one_line(result: subprocess.CompletedProcess[str], path: Path, advice: str) -> None:
    assert result.returncode == EXIT_DAMAGED_STATE, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if str(path) in line]
    assert advice in line, line


def _identity_damaged(state: Path) -> Path:
    (state / "identity.json").write_text('{"runner_id": "runner_x", "tok', encoding="utf-8")
    return state / "identity.json"


def _identity_not_json_object(state: Path) -> Path:
    (state / "identity.json").write_text(json.dumps(["runner_x"]), encoding="utf-8")
    return state / "identity.json"


def _identity_a_directory(state: Path) -> Path:
    (state / "identity.json").mkdir()
    return state / "identity.json"


def _database_damaged(state: Path) -> Path:
    (state / "agent.db").write_bytes(GARBAGE)
    return state / "agent.db"


def _database_a_directory(state: Path) -> Path:
    (state / "agent.db").mkdir()
    return state / "agent.db"


@pytest.mark.parametrize(
    ("damage", "advice"),
    [
        (_identity_damaged, "move it aside to register as a new runner"),
        (_identity_not_json_object, "move it aside to register as a new runner"),
        (_identity_a_directory, "move it aside to register as a new runner"),
        (_database_damaged, "restore it from a backup, or move it aside"),
        (_database_a_directory, "restore it from a backup, or move it aside"),
    ],
    ids=["identity-damaged", "identity-wrong-shape", "identity-directory", "agent-db-damaged", "agent-db-directory"],
)
async def test_damaged_agent_state_gives_one_line_and_exit_4(
    coordinator: CoordinatorHandle, tmp_path: Path, damage: Callable[[Path], Path], advice: str
) -> None:
    state = tmp_path / "agent"
    state.mkdir()
    path = damage(state)
    result = await _run("agent", agent_env(state, coordinator.url, free_port()))
    _assert_one_line(result, path, advice)


async def test_a_damaged_coordinator_database_gives_one_line_and_exit_4(tmp_path: Path) -> None:
    state = tmp_path / "coordinator"
    state.mkdir()
    database = state / "coordinator.db"
    database.write_bytes(GARBAGE)
    env = {
        "RUSTCI_STATE_DIR": str(state),
        "RUSTCI_LISTEN_PORT": str(free_port()),
        "RUSTCI_LISTEN_HOST": "127.0.0.1",
        "RUSTCI_API_KEY": API_KEY,
        "RUSTCI_REGISTRATION_KEY": REGISTRATION_KEY,
    }
    _assert_one_line(await _run("coordinator", env), database, "restore it from a backup, or move it aside")
