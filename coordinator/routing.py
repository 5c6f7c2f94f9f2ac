"""Routing jobs submitted to the fleet (``POST /api/jobs``) to runners by tags.

**Who qualifies.** A runner that has every tag of the job (and is of the job's ``type``, if it names one), is
``active`` (its agent reports it is running and accepting jobs), has its agent's channel open to this
coordinator, and has a free slot: ``max_concurrent_jobs`` (as its agent announced it) minus its jobs ``queued``
or ``running``.

**The choice.** Of the qualifying runners, the one with the most free slots; a tie goes to the one assigned the
fewest jobs in the last minute (then to the one registered first). Once assigned, the job is the runner's like a
job submitted to it directly: stored under it, delivered by ``coordinator.dispatch``, listed under it.

**Held.** A job no runner can take now stays ``queued`` with no runner, in submission order. Every change that
can make a runner qualify wakes the assigner: a runner registered, connected, updated (its tags), back to
``active`` (started, heartbeats again), a job ended (a slot freed); and while jobs are held it also looks again
every ``RECHECK`` seconds (a changed ``max_concurrent_jobs``, say). Each round hands out held jobs oldest first.

**Back to the pool.** When a runner turns ``inactive`` or is ``stopped`` (seen as it happens, and at start for
runners already so), its routed jobs that no agent has accepted yet (still undelivered) go back to the pool and
are assigned again; an accepted job stays with its
runner and ends there, so every job still ends in exactly one terminal state. The store moves a job back only
while it is undelivered, in one transaction, and a delivery acknowledged for a job its runner no longer holds is
answered with a cancel (see ``coordinator.dispatch``).

All assignment runs under one lock, so two rounds never count the same free slot twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator.dispatch import Dispatcher
from coordinator.hub import Hub
from coordinator.proxy import AgentClient
from coordinator.store.base import QueueState, RunnerFilter, RunnerRecord, StatusChange, Store
from coordinator.store.fleet import FleetJob
from coordinator.store.protocols import FleetStore
from shared.models import TERMINAL_JOB_STATUSES
from shared.tasks import TaskSet
from shared.timeutil import from_epoch, isoformat

log = structlog.get_logger(__name__)

BATCH = 500
"""Held jobs read per round."""
RECENT_WINDOW = 60.0
"""Assignments counted for the tie-break: those of the last minute."""
RECHECK = 1.0
"""Seconds between rounds while jobs are held, besides the ones events trigger."""
DEFAULT_SLOTS = 1
"""Slots of a runner whose agent has not announced ``max_concurrent_jobs``."""
RELEASED_ON = frozenset({"inactive", "stopped"})
WAKE_STATUSES = frozenset({"active"})
ASSIGNMENT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


@dataclass
class Assignment:
    runner: RunnerRecord
    queue: QueueState
    """What was queued and running on the runner just before the job (for its start-time estimate)."""


@dataclass
class Candidate:
    runner: RunnerRecord
    free: int

    def takes(self, job: FleetJob) -> bool:
        if self.free <= 0 or (job.type is not None and job.type != self.runner.type):
            return False
        return set(job.tags) <= set(self.runner.tags)


def slots(runner: RunnerRecord) -> int:
    value = runner.metadata.get("max_concurrent_jobs")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return DEFAULT_SLOTS


class _Waiting(Collector):
    """``rustci_jobs_waiting_for_runner{tags=...}``: held jobs by tag set, read from the router at scrape."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "rustci_jobs_waiting_for_runner",
            "Jobs submitted to the fleet that no runner has taken yet, by tag set (comma-separated, sorted).",
            labels=["tags"],
        )
        for tags, count in sorted(self._router.waiting.items()):
            gauge.add_metric([tags], count)
        yield gauge


class Router:
    def __init__(
        self,
        store: Store,
        fleet: FleetStore,
        agents: AgentClient,
        dispatcher: Dispatcher,
        hub: Hub,
        registry: CollectorRegistry,
    ) -> None:
        self._store = store
        self.fleet = fleet
        self._agents = agents
        self._dispatcher = dispatcher
        self._hub = hub
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._released: set[str] = set()
        self._recent: dict[str, deque[float]] = {}
        self._answering: dict[str, Assignment | None] = {}
        """Jobs whose submission is still being answered, and where they went (another round may place them)."""
        self._tasks = TaskSet("routing")
        self.waiting: Counter[str] = Counter()
        """Held jobs by tag set."""
        self.assignment_seconds = Histogram(
            "rustci_job_assignment_seconds",
            "Time from a job's submission to the fleet to its assignment to a runner.",
            buckets=ASSIGNMENT_BUCKETS,
            registry=registry,
        )
        registry.register(_Waiting(self))

    async def open(self) -> None:
        self.waiting = Counter(await self.fleet.held_by_tag_set())
        for status in RELEASED_ON:  # went away while no coordinator was watching
            away, _ = await self._store.list_runners(RunnerFilter(status=status), None, 0)
            self._released.update(runner.id for runner in away)
        self._tasks.spawn(self._assigner(), "assigner")
        self.wake()

    async def close(self) -> None:
        await self._tasks.close()

    # --- what the API and the rest of the coordinator call ---------------------------------------------------

    async def submit(self, job: FleetJob) -> Assignment | None:
        """Store a routed job and assign it (with anything held before it) if a runner can take it now."""
        self._answering[job.id] = None
        try:
            await self.fleet.insert(job)
            self.waiting[job.tag_set] += 1
            async with self._lock:
                await self._round()
            return self._answering[job.id]
        finally:
            del self._answering[job.id]

    async def cancel_held(self, job: FleetJob, reason: str) -> StatusChange | None:
        """Cancel a job while it is held; ``None`` if a runner has it (cancel it there instead)."""
        async with self._lock:
            change = await self.fleet.cancel_held(job.id, reason, time.time())
        if change is not None:
            self._count_out(job.tag_set)
        return change

    def wake(self) -> None:
        """Look for runners for the held jobs soon. Cheap and safe to call any number of times."""
        self._wake.set()

    def observe(self, event: dict[str, Any]) -> None:
        """Hub listener: wake on whatever can make a runner qualify; release on a runner going away."""
        kind = event.get("type")
        if kind == "runner_status_change":
            if event.get("new_status") in RELEASED_ON:
                self._released.add(str(event.get("runner_id")))
                self.wake()
            elif event.get("new_status") in WAKE_STATUSES:
                self.wake()
        elif kind == "runner_deleted":
            self._released.add(str(event.get("runner_id")))
        elif kind in ("runner_registered", "runner_updated"):
            self.wake()
        elif kind == "job_status_change" and event.get("new_status") in TERMINAL_JOB_STATUSES:
            self.wake()

    # --- the assigner ----------------------------------------------------------------------------------------

    async def _assigner(self) -> None:
        while True:
            try:
                async with asyncio.timeout(RECHECK if self.waiting.total() else None):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                async with self._lock:
                    await self._release()
                    await self._round()
            except Exception:
                log.exception("routing round failed")

    async def _release(self) -> None:
        while self._released:
            runner_id = self._released.pop()
            runner = await self._store.get_runner(runner_id)
            if runner is None:
                await self.fleet.forget_runner(runner_id)
                continue
            if runner.status not in RELEASED_ON:
                continue  # back already
            released = await self.fleet.release(runner_id)
            for job_id in released:
                job = await self.fleet.get(job_id)
                if job is not None:
                    self.waiting[job.tag_set] += 1
            if released:
                log.info("routed jobs back in the pool", runner_id=runner_id, jobs=len(released))

    async def _round(self) -> dict[str, Assignment]:
        """Assign held jobs, oldest first, while any runner has a free slot; returns them by job id."""
        assigned: dict[str, Assignment] = {}
        if not self.waiting.total():
            return assigned
        candidates = await self._candidates()
        after = 0
        while candidates:
            held = await self.fleet.held(BATCH, after)
            for job in held:
                choice = self._choose(job, candidates)
                done = await self._assign(job, choice) if choice is not None else None
                if done is not None:
                    assigned[job.id] = done
                    candidates = [c for c in candidates if c.free > 0]
                    if not candidates:
                        break
            if len(held) < BATCH:
                break
            after = held[-1].seq
        return assigned

    async def _candidates(self) -> list[Candidate]:
        runners, _ = await self._store.list_runners(RunnerFilter(status="active"), None, 0)
        # Channels here, and (several coordinators on one database) those other coordinators hold: a job routed
        # here is delivered through the holder (``Dispatcher.kick`` wakes it).
        elsewhere = await self._agents.bus.held_elsewhere() if runners else set()
        connected = [r for r in runners if self._agents.connected(r.id) or r.id in elsewhere]
        if not connected:
            return []
        open_jobs = await self.fleet.open_counts()
        candidates = [Candidate(r, slots(r) - open_jobs.get(r.id, 0)) for r in connected]
        return [c for c in candidates if c.free > 0]

    def _choose(self, job: FleetJob, candidates: list[Candidate]) -> Candidate | None:
        qualifying = [c for c in candidates if c.takes(job)]
        if not qualifying:
            return None
        return min(qualifying, key=lambda c: (-c.free, self._recent_count(c.runner.id)))

    async def _assign(self, job: FleetJob, choice: Candidate) -> Assignment | None:
        now = time.time()
        taken = await self.fleet.assign(job, choice.runner.id, now)
        if taken is None:
            return None  # cancelled meanwhile
        record, queue = taken
        choice.free -= 1
        self._count_out(job.tag_set)
        self._recent.setdefault(choice.runner.id, deque()).append(now)
        self.assignment_seconds.observe(max(now - job.created_at, 0.0))
        self._dispatcher.submitted(choice.runner, record)
        self._hub.publish(
            {
                "type": "job_assigned",
                "runner_id": choice.runner.id,
                "job_id": job.id,
                "tags": sorted(set(job.tags)),
                "waited_seconds": round(max(now - job.created_at, 0.0), 3),
                "timestamp": isoformat(from_epoch(now)),
            }
        )
        log.info("routed job assigned", job_id=job.id, runner_id=choice.runner.id, free_before=choice.free + 1)
        assignment = Assignment(choice.runner, queue)
        if job.id in self._answering:
            self._answering[job.id] = assignment
        return assignment

    def _recent_count(self, runner_id: str) -> int:
        times = self._recent.get(runner_id)
        if not times:
            return 0
        horizon = time.time() - RECENT_WINDOW
        while times and times[0] < horizon:
            times.popleft()
        return len(times)

    def _count_out(self, tags: str) -> None:
        self.waiting[tags] -= 1
        if self.waiting[tags] <= 0:
            del self.waiting[tags]
