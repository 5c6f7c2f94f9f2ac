"""The coordinator's Prometheus metrics, served at ``/metrics`` without credentials.

One ``CollectorRegistry`` per application, kept at ``keys.PROMETHEUS`` (never the process-wide default registry, so
two coordinators in one process, as in the tests, count separately).

- Counted where they happen: HTTP requests by route template (never the raw path, whose ids would make a series
  per runner), method and status, with latency; job and step durations, observed once when a job's terminal event
  is applied; log entries ingested.
- Read from the store when scraped: runners by status and type, open jobs (queued, running) by status, so
  they say what is true now, are right after a restart and cost nothing between scrapes; storage errors from
  the database; WebSocket clients from the hub, SSE log followers from the log feed.
- From :func:`shared.prometheus.daemon_registry`: ``process_*``, ``python_*``, ``rustci_build_info``; no
  ``*_created`` series.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator.hub import Hub
from coordinator.store.base import StatusChange
from coordinator.store.protocols import MetricsStore
from shared.logs import DroppedLines
from shared.models import RUNNER_STATUSES, RUNNER_TYPES, TERMINAL_JOB_STATUSES, AgentEvent, LogEvent
from shared.prometheus import daemon_registry

# Seconds. API calls are milliseconds; jobs and steps run from milliseconds to hours.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
RUN_TIME_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600)
UNMATCHED_ROUTE = "unmatched"
OPEN_JOB_STATUSES = ("queued", "running")


class _Scraped(Collector):
    """Values read right before each scrape (see :meth:`CoordinatorMetrics.refresh`)."""

    def __init__(self) -> None:
        self.runners: dict[tuple[str, str], int] = {}
        self.jobs: dict[str, int] = {}
        self.websocket_clients = 0
        self.websocket_slow = 0
        self.sse_clients = 0
        self.storage_errors = 0

    def collect(self) -> Iterator[Metric]:
        runners = GaugeMetricFamily(
            "rustci_runners", "Registered runners by status and type.", labels=["status", "type"]
        )
        for status in RUNNER_STATUSES:
            for kind in RUNNER_TYPES:
                runners.add_metric([status, kind], self.runners.get((status, kind), 0))
        yield runners
        jobs = GaugeMetricFamily(
            "rustci_jobs", "Open jobs now, by status (queued: waiting or held; running).", labels=["status"]
        )
        for status in OPEN_JOB_STATUSES:
            jobs.add_metric([status], self.jobs.get(status, 0))
        yield jobs
        yield CounterMetricFamily(
            "rustci_storage_errors",
            "Database operations that failed with a storage error (disk full, I/O error, locked) since start.",
            value=self.storage_errors,
        )
        yield GaugeMetricFamily(
            "rustci_websocket_clients", "Clients connected to /api/runners/ws.", value=self.websocket_clients
        )
        yield GaugeMetricFamily(
            "rustci_sse_clients", "Clients following a log as Server-Sent Events.", value=self.sse_clients
        )
        yield CounterMetricFamily(
            "rustci_websocket_slow_disconnects",
            "WebSocket clients disconnected (code 1008) because their event queue overflowed.",
            value=self.websocket_slow,
        )

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class CoordinatorMetrics:
    def __init__(self) -> None:
        self.registry = daemon_registry("coordinator")
        self.http_requests = Counter(
            "rustci_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "rustci_http_request_duration_seconds",
            "Time to answer an HTTP request (WebSocket sessions excluded), by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "rustci_job_duration_seconds",
            "Run time of finished jobs (first start to end, retries included), by final status.",
            ["status"],
            buckets=RUN_TIME_BUCKETS,
            registry=self.registry,
        )
        self.step_duration = Histogram(
            "rustci_step_duration_seconds",
            "Run time of the steps of finished jobs, by the step's status.",
            ["status"],
            buckets=RUN_TIME_BUCKETS,
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "rustci_jobs_finished",
            "Jobs that reached a final status as reported by their agents, by that status.",
            ["status"],
            registry=self.registry,
        )
        for status in sorted(TERMINAL_JOB_STATUSES):
            self.jobs_finished.labels(status)
        self.log_entries = Counter(
            "rustci_log_entries_ingested", "Log entries stored from agents.", registry=self.registry
        )
        self._scraped = _Scraped()
        self.registry.register(self._scraped)
        self.registry.register(DroppedLines())
        # Per runner, the highest event sequence already counted, so a batch the agent resends (its
        # acknowledgement was lost) is not counted twice. Filled from the store the first time a runner sends.
        self._marks: dict[str, int] = {}

    # --- scrape --------------------------------------------------------------------------------------------

    async def refresh(self, store: MetricsStore, hub: Hub, sse_clients: int, storage_errors: int) -> None:
        """Read the values computed at scrape time; call right before :meth:`exposition`."""
        self._scraped.runners, self._scraped.jobs = await store.registry_counts()
        self._scraped.websocket_clients = hub.client_count
        self._scraped.websocket_slow = hub.slow_disconnects
        self._scraped.sse_clients = sse_clients
        self._scraped.storage_errors = storage_errors

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # --- HTTP ----------------------------------------------------------------------------------------------

    def observe_request(self, route: str | None, method: str, status: int, seconds: float | None) -> None:
        route = route or UNMATCHED_ROUTE
        self.http_requests.labels(route, method, str(status)).inc()
        if seconds is not None:
            self.http_duration.labels(route, method).observe(seconds)

    # --- ingest --------------------------------------------------------------------------------------------

    async def mark_before(self, store: MetricsStore, runner_id: str) -> int:
        """The runner's event high-water mark before a batch is applied (from memory after the first batch)."""
        mark = self._marks.get(runner_id)
        if mark is None:
            mark = await store.event_mark(runner_id)
        return mark

    async def observe_ingest(
        self,
        store: MetricsStore,
        runner_id: str,
        events: Sequence[AgentEvent],
        mark_before: int,
        acked: int,
        changes: Sequence[StatusChange],
    ) -> None:
        """Count what one applied batch changed: the log entries past the old mark, the jobs that finished."""
        self._marks[runner_id] = max(acked, self._marks.get(runner_id, 0))
        logs = sum(1 for e in events if isinstance(e, LogEvent) and mark_before < e.seq <= acked)
        if logs:
            self.log_entries.inc(logs)
        finished = [c.id for c in changes if c.kind == "job" and c.new_status in TERMINAL_JOB_STATUSES]
        for timing in await store.job_timings(finished):
            self.jobs_finished.labels(timing.status).inc()
            if timing.duration is not None:
                self.job_duration.labels(timing.status).observe(max(0.0, timing.duration))
            for status, seconds in timing.steps:
                self.step_duration.labels(status).observe(seconds)

    def forget_runner(self, runner_id: str) -> None:
        self._marks.pop(runner_id, None)
