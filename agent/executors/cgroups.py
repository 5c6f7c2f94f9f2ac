"""A cgroup per job for the native executor: memory and CPU limits the kernel enforces on the whole job.

Two layouts are supported, found at the agent's start:

- **cgroup v2** (preferred): a directory of the unified hierarchy the agent may write, with the ``memory`` and
  ``cpu`` controllers available: ``native.cgroup_parent`` when set, else the agent's own cgroup (a systemd unit
  with ``Delegate=yes`` gets one it owns; the agent then moves itself to a ``agent`` leaf, as the kernel allows
  no processes in a group whose controllers are enabled for its children), else a writable hierarchy root. Job
  groups get ``memory.max`` (swap off: ``memory.swap.max`` 0) and ``cpu.max``; an OOM kill shows in
  ``memory.events``; ``cgroup.kill`` ends every process of the job.
- **cgroup v1**: the ``memory`` and ``cpu`` hierarchies, writable (as root on most hosts), with a group under the
  agent's own in each: ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes`` where swap accounting is
  on), ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``; an OOM kill shows in ``memory.oom_control``.

A step's processes join the job's groups between ``fork`` and ``exec`` (the child writes its own pid to
``cgroup.procs``), so nothing it starts is ever outside them.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

CFS_PERIOD_US = 100_000
ROOT = Path("/sys/fs/cgroup")


def _mounts() -> list[tuple[str, Path, set[str]]]:
    """(filesystem type, mount point, options) of each cgroup mount."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                found.append((parts[2], Path(parts[1]), set(parts[3].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """The agent's own cgroup path per v1 controller, and under ``""`` in the unified hierarchy."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


@dataclass
class JobGroup:
    """One job's cgroups (one directory on v2, one per controller on v1)."""

    version: int
    dirs: list[Path]

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def limit(self, memory: int | None, cpus: float | None) -> None:
        if self.version == 2:
            group = self.dirs[0]
            if memory is not None:
                (group / "memory.max").write_text(str(memory))
                with contextlib.suppress(OSError):
                    (group / "memory.swap.max").write_text("0")
            if cpus is not None:
                (group / "cpu.max").write_text(f"{max(1000, int(cpus * CFS_PERIOD_US))} {CFS_PERIOD_US}")
            return
        memory_dir, cpu_dir = self.dirs
        if memory is not None:
            (memory_dir / "memory.limit_in_bytes").write_text(str(memory))
            with contextlib.suppress(OSError):  # only where swap accounting is on
                (memory_dir / "memory.memsw.limit_in_bytes").write_text(str(memory))
        if cpus is not None:
            (cpu_dir / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (cpu_dir / "cpu.cfs_quota_us").write_text(str(max(1000, int(cpus * CFS_PERIOD_US))))

    def oom_kills(self) -> int:
        """How many processes of the job the kernel killed for being over the memory limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError, ValueError):
            for line in (self.dirs[0] / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in Path(procs).read_text().split())
        return sorted(found)

    def kill_all(self) -> None:
        """SIGKILL every process in the job's groups (those that left the step's process group too)."""
        if self.version == 2:
            with contextlib.suppress(OSError):
                (self.dirs[0] / "cgroup.kill").write_text("1")
                return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        for group in self.dirs:
            with contextlib.suppress(FileNotFoundError):
                group.rmdir()


@dataclass
class CgroupDriver:
    """Where job groups are made, and which cgroup version."""

    version: int
    parents: list[Path]  # v2: [parent]; v1: [memory parent, cpu parent]

    @property
    def kind(self) -> str:
        return f"cgroup-v{self.version}"

    def create(self, name: str) -> JobGroup:
        dirs = []
        for parent in self.parents:
            group = parent / name
            with contextlib.suppress(FileExistsError):
                group.mkdir(parents=True)
            dirs.append(group)
        return JobGroup(self.version, dirs)


def _v2_parent(mount: Path, configured: Path | None) -> Path | None:
    candidates = [configured] if configured else [mount / _own_paths().get("", "/").lstrip("/"), mount]
    for parent in candidates:
        if parent is None or not _writable(parent):
            continue
        controllers = parent / "cgroup.controllers"
        available = set(controllers.read_text().split()) if controllers.exists() else set()
        if not {"memory", "cpu"} <= available:
            continue
        if _enable_controllers(parent):
            return parent / "rustci-jobs"
    return None


def _enable_controllers(parent: Path) -> bool:
    control = parent / "cgroup.subtree_control"
    try:
        control.write_text("+memory +cpu")
    except OSError:
        # No internal processes in a group with controllers on for its children: move the agent to a leaf.
        procs = [p for p in (parent / "cgroup.procs").read_text().split() if p]
        if str(os.getpid()) not in procs:
            return False
        leaf = parent / "agent"
        try:
            leaf.mkdir(exist_ok=True)
            for pid in procs:
                with contextlib.suppress(OSError):
                    (leaf / "cgroup.procs").write_text(pid)
            control.write_text("+memory +cpu")
        except OSError:
            return False
    jobs = parent / "rustci-jobs"
    try:
        jobs.mkdir(exist_ok=True)
        (jobs / "cgroup.subtree_control").write_text("+memory +cpu")
    except OSError:
        return False
    return True


def detect(configured: Path | None = None) -> CgroupDriver | None:
    """The cgroup layout the agent can make job groups in, or None (then setrlimit is the fallback)."""
    mounts = _mounts()
    for fstype, mount, _ in mounts:
        if fstype == "cgroup2":
            with contextlib.suppress(OSError):
                parent = _v2_parent(mount, configured)
                if parent is not None:
                    return CgroupDriver(2, [parent])
    v1 = {c: mount for kind, mount, options in mounts if kind == "cgroup" for c in options & {"memory", "cpu"}}
    if "memory" in v1 and "cpu" in v1:
        own = _own_paths()
        parents = []
        for controller in ("memory", "cpu"):
            base = v1[controller] / own.get(controller, "/").lstrip("/")
            if not _writable(base):
                base = v1[controller]
            parents.append(base / "rustci")
        if all(_writable(p.parent) for p in parents):
            return CgroupDriver(1, parents)
    return None
