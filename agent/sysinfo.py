"""What the agent knows of its host (psutil): metadata and resources at registration, load for heartbeats and
metric samples, free space for health checks. What an executor's engine says of itself is the executor's."""

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


def free_gb(path: Path) -> tuple[float, float]:
    """(free disk on ``path``'s filesystem, available memory), in GiB."""
    disk = psutil.disk_usage(str(_existing(path))).free / GIB
    memory = psutil.virtual_memory().available / GIB
    return round(disk, 2), round(memory, 2)


class CpuMeter:
    """CPU use since this meter's previous reading.

    ``psutil.cpu_percent(None)`` measures since the previous call by *anyone* in the process (the heartbeat, the
    status API), so a sample would cover an arbitrary slice of its interval; the sampler keeps its own meter.
    """

    def __init__(self) -> None:
        self._last = psutil.cpu_times()

    def percent(self) -> float:
        now = psutil.cpu_times()
        last, self._last = self._last, now
        total = sum(now) - sum(last)
        if total <= 0:
            return 0.0
        # As psutil does: time waiting for I/O is idle time, and guest time is already counted in user time.
        idle = (now.idle - last.idle) + (getattr(now, "iowait", 0.0) - getattr(last, "iowait", 0.0))
        guest = (getattr(now, "guest", 0.0) - getattr(last, "guest", 0.0)) + (
            getattr(now, "guest_nice", 0.0) - getattr(last, "guest_nice", 0.0)
        )
        busy = total - idle - guest
        return round(min(100.0, max(0.0, 100.0 * busy / max(total - guest, 1e-9))), 1)


def memory_disk_usage(path: Path) -> tuple[float, float]:
    """(memory in use, disk in use on ``path``'s filesystem), in percent."""
    return round(psutil.virtual_memory().percent, 1), round(psutil.disk_usage(str(_existing(path))).percent, 1)
