"""The agent's own metrics: Prometheus exposition on its port, and the load samples behind the coordinator's history.

Each :class:`AgentMetrics` has its own ``CollectorRegistry`` (never the process-wide default), so two agents in one
process, as in the tests, count separately. Values the agent already keeps (running and queued jobs, job outcomes,
the outbox) are read when Prometheus scrapes; events nothing else records (step durations, executor errors,
heartbeat failures, samples dropped) are counted where they happen. The registry also holds the process,
Python and build collectors of :func:`shared.prometheus.daemon_registry` (and no ``*_created`` series).

Load samples are taken every ``metrics_interval`` into a bounded buffer and leave it only once a heartbeat that
carried them was answered, so a coordinator outage loses at most what the bound drops (counted).
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import sysinfo
from agent.executors.base import ExecutorError, JobContext, JobSteps, OutputSink, StepContext
from shared.logs import DroppedLines
from shared.models import TERMINAL_JOB_STATUSES, MetricSample
from shared.prometheus import daemon_registry
from shared.sqlite import Database
from shared.timeutil import utcnow

# Steps run from milliseconds (echo) to hours (builds).
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200)


class SampleBuffer:
    """Unsent load samples, oldest first, at most ``limit`` (the oldest are dropped, and counted, past it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[MetricSample] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, sample: MetricSample) -> None:
        if len(self._items) >= self.limit:
            self._items.popleft()
            self.dropped += 1
        self._items.append(sample)

    def pending(self, limit: int) -> list[MetricSample]:
        """The oldest ``limit`` samples, left in the buffer until :meth:`acknowledge`."""
        return list(itertools.islice(self._items, limit))

    def acknowledge(self, sent: list[MetricSample]) -> None:
        """Forget the samples a heartbeat delivered. Samples are appended in time order, so everything up to
        the last one sent was sent (or dropped meanwhile, which is also gone)."""
        if not sent:
            return
        last = sent[-1].at
        while self._items and self._items[0].at <= last:
            self._items.popleft()


class _Scraped(Collector):
    """What is read from the agent right before each scrape (see :meth:`AgentMetrics.refresh`)."""

    def __init__(self) -> None:
        self.running = 0
        self.queued = 0
        self.outcomes: dict[str, int] = {}
        self.spool_bytes = 0
        self.spool_events = 0
        self.dropped: dict[str, int] = {}
        self.samples_buffered = 0
        self.storage_errors = 0

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("rustci_agent_jobs_running", "Jobs running on this agent now.", value=self.running)
        yield GaugeMetricFamily("rustci_agent_jobs_queued", "Jobs waiting in this agent's queue.", value=self.queued)
        outcomes = CounterMetricFamily(
            "rustci_agent_job_outcomes", "Jobs this agent finished, by final status.", labels=["status"]
        )
        for status in sorted(TERMINAL_JOB_STATUSES):
            outcomes.add_metric([status], self.outcomes.get(status, 0))
        yield outcomes
        yield GaugeMetricFamily(
            "rustci_agent_spool_bytes",
            "Bytes of job events and log entries in the outbox, not yet acknowledged by the coordinator.",
            value=self.spool_bytes,
        )
        yield GaugeMetricFamily(
            "rustci_agent_spool_events", "Entries in the outbox not yet acknowledged.", value=self.spool_events
        )
        dropped = CounterMetricFamily(
            "rustci_agent_spool_dropped",
            "Entries dropped because a bounded buffer was full while the coordinator could not be reached"
            " (log_entries: the outbox; metric_samples: the load samples).",
            labels=["kind"],
        )
        for kind in ("log_entries", "metric_samples"):
            dropped.add_metric([kind], self.dropped.get(kind, 0))
        yield dropped
        yield CounterMetricFamily(
            "rustci_agent_storage_errors",
            "Operations on the agent's database that failed with a storage error (disk full, I/O error) since start.",
            value=self.storage_errors,
        )
        yield GaugeMetricFamily(
            "rustci_agent_metric_samples_buffered",
            "Load samples waiting for the next heartbeat to carry them.",
            value=self.samples_buffered,
        )

    def describe(self) -> Iterator[Metric]:
        return self.collect()


def _read_store(conn: sqlite3.Connection) -> tuple[dict[str, int], int, int]:
    outcomes = {
        str(row[0]): int(row[1])
        for row in conn.execute(
            "SELECT status, COUNT(*) FROM jobs WHERE status IN ('completed', 'failed', 'timed_out', 'cancelled')"
            " GROUP BY status"
        )
    }
    events, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(body AS BLOB))), 0) FROM outbox").fetchone()
    return outcomes, int(size), int(events)


class AgentMetrics:
    def __init__(self, sample_limit: int) -> None:
        self.registry = daemon_registry("agent")
        self.step_duration = Histogram(
            "rustci_agent_step_duration_seconds",
            "Time each step ran in the executor, by how it ended (completed, failed, cancelled, error).",
            ["status"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.executor_errors = Counter(
            "rustci_agent_executor_errors",
            "Failures of the executor itself (not of a job's commands), by phase.",
            ["phase"],
            registry=self.registry,
        )
        self.heartbeat_failures = Counter(
            "rustci_agent_heartbeat_failures", "Heartbeats the coordinator did not accept.", registry=self.registry
        )
        self.events_quarantined = Counter(
            "rustci_agent_events_quarantined",
            "Outbox entries the coordinator refused, kept aside in the agent's store so the rest could flow.",
            registry=self.registry,
        )
        for phase in ("setup", "run_step", "cleanup"):
            self.executor_errors.labels(phase)
        self._scraped = _Scraped()
        self.registry.register(self._scraped)
        self.registry.register(DroppedLines())
        self.samples = SampleBuffer(sample_limit)

    # --- Prometheus ----------------------------------------------------------------------------------------

    async def refresh(self, db: Database, running: int, queued: int, log_entries_dropped: int) -> None:
        """Read the live values; call right before :meth:`exposition`."""
        outcomes, spool_bytes, spool_events = await db.read(_read_store)
        scraped = self._scraped
        scraped.running, scraped.queued = running, queued
        scraped.outcomes, scraped.spool_bytes, scraped.spool_events = outcomes, spool_bytes, spool_events
        scraped.dropped = {"log_entries": log_entries_dropped, "metric_samples": self.samples.dropped}
        scraped.samples_buffered = len(self.samples)
        scraped.storage_errors = db.errors

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def instrument(self, executor: JobSteps) -> InstrumentedExecutor:
        return InstrumentedExecutor(executor, self)

    # --- load samples --------------------------------------------------------------------------------------

    async def sample_forever(self, interval: float, path: Path, active_jobs: Callable[[], int]) -> None:
        meter = sysinfo.CpuMeter()
        while True:
            # Sleep first: a CPU reading covers the interval since the previous one.
            await asyncio.sleep(interval)
            memory, disk = sysinfo.memory_disk_usage(path)
            self.samples.add(
                MetricSample(
                    at=utcnow(),
                    cpu_usage=meter.percent(),
                    memory_usage=memory,
                    disk_usage=disk,
                    active_jobs=active_jobs(),
                )
            )


class InstrumentedExecutor:
    """An executor that times steps and counts executor errors, around any other executor (same contract)."""

    def __init__(self, inner: JobSteps, metrics: AgentMetrics) -> None:
        self.inner = inner
        self._metrics = metrics

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def times_steps(self) -> bool:
        return self.inner.times_steps

    async def reattach(self, job: JobContext) -> int | None:
        return await self.inner.reattach(job)

    async def setup(self, job: JobContext) -> None:
        try:
            await self.inner.setup(job)
        except ExecutorError:
            self._metrics.executor_errors.labels("setup").inc()
            raise

    async def run_step(self, job: JobContext, step: StepContext, output: OutputSink) -> int:
        started = time.monotonic()
        status = "error"
        try:
            code = await self.inner.run_step(job, step, output)
            status = "completed" if code == 0 else "failed"
            return code
        except ExecutorError:
            self._metrics.executor_errors.labels("run_step").inc()
            raise
        except asyncio.CancelledError:
            status = "cancelled"  # a timeout, a user's cancel or a shutdown ended the step
            raise
        finally:
            self._metrics.step_duration.labels(status).observe(time.monotonic() - started)

    async def cleanup(self, job: JobContext) -> None:
        try:
            await self.inner.cleanup(job)
        except ExecutorError:
            self._metrics.executor_errors.labels("cleanup").inc()
            raise
