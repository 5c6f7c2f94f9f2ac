"""What the agent knows of its host (psutil, Docker): metadata and resources at registration, load for heartbeats
and metric samples, free space and the Docker daemon for health checks."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
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
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://") and not _unix_socket_answers(host[len("unix://") :]):
        # The SDK would fail too, and leave its socket open doing so.
        return None
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return str(client.version().get("Version"))
        finally:
            client.close()
    except Exception:
        return None


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


def _unix_socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


class DockerProbe:
    """Whether the Docker daemon answers, and its version, asked at most every ``ttl`` seconds.

    Asked over the Engine API directly (``GET /version`` on ``DOCKER_HOST``, the local socket by default) with
    aiohttp: bounded by ``timeout``, nothing blocks the event loop, and a daemon that is down costs no thread
    and leaks no socket (the Docker SDK leaves its socket open when the connection fails). TLS and SSH hosts
    go through the SDK in a thread. Concurrent callers wait for one probe and share its answer.
    """

    def __init__(self, ttl: float = 5.0, timeout: float = 1.5) -> None:
        self._ttl = ttl
        self._timeout = timeout
        self._checked_at = -ttl
        self._answer: tuple[str | None, str | None] = (None, "not checked yet")
        self._lock = asyncio.Lock()

    async def check(self) -> tuple[str | None, str | None]:
        """``(version, None)`` when the daemon answered, else ``(None, reason)``."""
        async with self._lock:
            if time.monotonic() - self._checked_at >= self._ttl:
                self._answer = await self._ask()
                self._checked_at = time.monotonic()
            return self._answer

    async def _ask(self) -> tuple[str | None, str | None]:
        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if host.startswith("unix://"):
            connector: aiohttp.BaseConnector | None = aiohttp.UnixConnector(path=host[len("unix://") :])
            url = "http://docker/version"
        elif host.startswith("tcp://") and not os.environ.get("DOCKER_TLS_VERIFY"):
            connector, url = None, f"http://{host[len('tcp://') :]}/version"
        else:
            try:
                async with asyncio.timeout(self._timeout):
                    version = await asyncio.to_thread(docker_version)
            except TimeoutError:
                return None, f"the Docker daemon did not answer within {self._timeout:g}s"
            return (version, None) if version else (None, f"the Docker daemon at {host} is not reachable")
        try:
            async with (
                aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout)
                ) as session,
                session.get(url) as response,
            ):
                data = await response.json(content_type=None)
                return str(data["Version"]), None
        except TimeoutError:
            return None, f"the Docker daemon did not answer within {self._timeout:g}s"
        except (aiohttp.ClientError, ValueError, KeyError, TypeError) as e:
            return None, f"the Docker daemon at {host} is not reachable: {type(e).__name__}"


def memory_disk_usage(path: Path) -> tuple[float, float]:
    """(memory in use, disk in use on ``path``'s filesystem), in percent."""
    return round(psutil.virtual_memory().percent, 1), round(psutil.disk_usage(str(_existing(path))).percent, 1)
