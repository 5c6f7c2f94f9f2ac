"""A coordinator subprocess for the operations tests, stopped by its PID however the test ends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from tests.conftest import API_KEY
from tests.helpers import DaemonProcess


@contextlib.asynccontextmanager
async def coordinator_daemon(tmp_path: Path, port: int, **env: str) -> AsyncIterator[DaemonProcess]:
    proc = DaemonProcess(
        "coordinator",
        {
            "RUSTCI_STATE_DIR": str(tmp_path / "coordinator-state"),
            "RUSTCI_LISTEN_PORT": str(port),
            "RUSTCI_LISTEN_HOST": "127.0.0.1",
            "RUSTCI_API_KEY": API_KEY,
            **env,
        },
        tmp_path / "coordinator.log",
    ).start()
    try:
        yield proc
    finally:
        await proc.stop(timeout=10)
