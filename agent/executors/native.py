"""Native executor: the job's steps as host processes (as the local executor runs them) with the runner's
``resource_limits`` enforced and, with ``native.run_as``, as another user.

Enforcement, decided once at the agent's start and shown in the runner's health (``checks.resource_limits``):

- ``cgroup-v2`` / ``cgroup-v1``: a cgroup per job attempt (see :mod:`agent.executors.cgroups`); ``memory_limit``
  bounds the job's memory (the kernel kills it past the limit, and the step fails saying so), ``cpu_limit`` its
  CPU time per period (a job of ``200m`` gets a fifth of one CPU, however many processes it runs).
- ``setrlimit``: without a cgroup, each step's processes get ``RLIMIT_AS`` from ``memory_limit`` (per process,
  not per job); a CPU *rate* cannot be bounded this way, so ``cpu_limit`` is not enforced (health says so).
- ``none``: ``native.limits: off``, or no limits configured.
"""

from __future__ import annotations

import os
import pwd
import resource
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.executors import cgroups
from agent.executors.base import ExecutorError, JobContext, StepContext, StepFailed
from agent.executors.local import LocalExecutor
from agent.executors.quantities import cpus, memory_bytes
from shared.models import HealthCheck

log = structlog.get_logger(__name__)

OOM_EXIT = 137  # 128 + SIGKILL: what a shell reports for a process the kernel's OOM killer ended


class NativeExecutor(LocalExecutor):
    name = "native"
    runner_type = "native"

    def __init__(self, config: AgentConfig) -> None:
        super().__init__(config)
        settings = config.native
        self._driver: cgroups.CgroupDriver | None = None
        if settings.limits in ("auto", "cgroup"):
            self._driver = cgroups.detect(settings.cgroup_parent)
            if self._driver is None and settings.limits == "cgroup":
                raise ExecutorError("native.limits is cgroup, but the agent cannot create cgroups on this host")
        self._groups: dict[tuple[str, int], cgroups.JobGroup] = {}
        self._oom_before: dict[tuple[str, int], int] = {}
        self._user = _user(settings.run_as) if settings.run_as else None

    @property
    def enforcement(self) -> str:
        """``cgroup-v2``, ``cgroup-v1``, ``setrlimit`` or ``none``."""
        if self.config.native.limits == "off":
            return "none"
        if self._driver is not None:
            return self._driver.kind
        return "setrlimit"

    async def health(self) -> dict[str, HealthCheck]:
        limits = self.config.resource_limits
        enforcement = self.enforcement
        cpu_enforced = enforcement.startswith("cgroup")
        memory_enforced = enforcement != "none"
        status = "pass"
        if (limits.cpu_limit and not cpu_enforced) or (limits.memory_limit and not memory_enforced):
            status = "warn"  # a limit is configured that this host cannot enforce
        return {
            "resource_limits": HealthCheck(
                status=status,
                enforcement=enforcement,
                memory_limit=limits.memory_limit if memory_enforced else None,
                cpu_limit=limits.cpu_limit if cpu_enforced else None,
                run_as=self.config.native.run_as,
            )
        }

    async def setup(self, job: JobContext) -> None:
        await super().setup(job)
        limits = self.config.resource_limits
        if self._driver is None or self.enforcement == "none" or not (limits.memory_limit or limits.cpu_limit):
            return
        try:
            group = self._driver.create(f"{job.job_id}-{job.attempt}")
            group.limit(
                memory_bytes(limits.memory_limit) if limits.memory_limit else None,
                cpus(limits.cpu_limit) if limits.cpu_limit else None,
            )
        except OSError as e:
            raise ExecutorError(f"cannot create the job's cgroup: {e.strerror or e}") from e
        self._groups[(job.job_id, job.attempt)] = group
        if self._user is not None:
            for path in group.procs_files:
                os.chown(path, self._user[0], self._user[1])
        if self._user is not None:
            os.chown(job.workspace, self._user[0], self._user[1])

    async def cleanup(self, job: JobContext) -> None:
        group = self._groups.pop((job.job_id, job.attempt), None)
        self._oom_before.pop((job.job_id, job.attempt), None)
        if group is not None:
            group.kill_all()
            group.remove()
        await super().cleanup(job)

    def _spawn_options(self, job: JobContext) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self._user is not None:
            options.update(user=self._user[0], group=self._user[1], extra_groups=[])
        group = self._groups.get((job.job_id, job.attempt))
        if group is not None:
            self._oom_before[(job.job_id, job.attempt)] = group.oom_kills()
            procs = group.procs_files

            def join() -> None:  # in the child, before exec: everything the step starts is in the group
                for path in procs:
                    with open(path, "w") as f:
                        f.write(str(os.getpid()))

            options["preexec_fn"] = join
        elif self.enforcement == "setrlimit" and self.config.resource_limits.memory_limit:
            limit = memory_bytes(self.config.resource_limits.memory_limit)

            def bound() -> None:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

            options["preexec_fn"] = bound
        return options

    def _step_ended(self, job: JobContext) -> None:
        group = self._groups.get((job.job_id, job.attempt))
        if group is not None:
            group.kill_all()  # what left the step's process group but not the job's cgroup

    def _check_step(self, job: JobContext, step: StepContext, code: int) -> None:
        group = self._groups.get((job.job_id, job.attempt))
        if group is None or code == 0:
            return
        if group.oom_kills() > self._oom_before.get((job.job_id, job.attempt), 0):
            limit = self.config.resource_limits.memory_limit
            raise StepFailed(
                code or OOM_EXIT, f"step '{step.spec.name}' was killed: over the job's memory limit of {limit}"
            )


def _user(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError as e:
        raise ExecutorError(f"native.run_as: no user {name!r} on this host") from e
    return entry.pw_uid, entry.pw_gid
