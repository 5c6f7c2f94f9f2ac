"""What the agent knows of its host (psutil): metadata and resources at registration, load for heartbeats."""

from __future__ import annotations

import platform
import socket
from pathlib import Path
from typing import Any

import psutil

from shared.models import CurrentLoad

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}
GIB = 1024**3


def host_metadata() -> dict[str, Any]:
    return {
        "os": platform.system().lower(),
        "arch": _ARCH.get(platform.machine().lower(), platform.machine().lower()),
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "python_version": platform.python_version(),
        "agent_version": _agent_version(),
    }


def _agent_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rustci-runner")
    except PackageNotFoundError:
        return "0+unknown"


def resources(path: Path) -> dict[str, float]:
    return {
        "cpu_cores": float(psutil.cpu_count() or 1),
        "memory_gb": round(psutil.virtual_memory().total / GIB, 1),
        "disk_gb": round(psutil.disk_usage(str(_existing(path))).total / GIB, 1),
    }


def load(path: Path, active_jobs: int, queued_jobs: int) -> CurrentLoad:
    """Current load. ``cpu_percent(None)`` compares with the previous call, so it never blocks."""
    return CurrentLoad(
        active_jobs=active_jobs,
        queued_jobs=queued_jobs,
        cpu_usage=round(psutil.cpu_percent(interval=None), 1),
        memory_usage=round(psutil.virtual_memory().percent, 1),
        disk_usage=round(psutil.disk_usage(str(_existing(path))).percent, 1),
    )


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def docker_version() -> str | None:
    """The Docker engine's version, or None without one (blocking: call from a thread)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return str(client.version().get("Version"))
        finally:
            client.close()
    except Exception:
        return None
