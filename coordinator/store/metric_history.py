"""Metric history without an engine: the tiers' records, the retention and bucket maths, and what every engine's
metric store does the same way (filtering and scaling samples, caching uptime, the compaction loop).

An engine's store (``coordinator.store.metrics`` for SQLite, ``coordinator.store.postgres.metrics``) subclasses
:class:`MetricHistory` and implements its storage hooks (``_insert``, ``_slots``, ``_runner_keys``,
``_compact_runner``) and the read queries; the layout and meaning of the tiers is described in
``coordinator.store.metrics``.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from coordinator.config import MetricsHistory
from shared.models import MetricSample

log = structlog.get_logger(__name__)

SLOT = 300
"""Uptime is counted in 5-minute slots: one with any sample (raw or rolled up) counts as active."""
FIVE_MINUTES = 300
HOUR = 3600
MAX_CLOCK_SKEW = 300.0
"""Samples stamped further than this in the future are refused (an agent with a wrong clock)."""
TERMINAL_STATUSES = ("completed", "failed", "timed_out", "cancelled")
UPTIME_CACHE_TTL = 60.0
"""Seconds an uptime figure is served from memory: it counts 5-minute slots, and new samples drop it."""
UPTIME_CACHE_SIZE = 20_000
SERIES = ("cpu_usage", "memory_usage", "disk_usage", "active_jobs")

COLUMNS = {"cpu_usage": "cpu", "memory_usage": "memory", "disk_usage": "disk", "active_jobs": "jobs"}
"""Each series' stored column (``metric_samples``) or column prefix (``metric_rollups``: ``<c>_sum``, ``<c>_max``)."""
SCALE = 10
"""Stored values are integer tenths (of a percent; active jobs are stored as tenths too, so one scale fits all)."""


class Row(Protocol):
    """A result row of any engine (``sqlite3.Row``, ``asyncpg.Record``, a tuple), read by position."""

    def __getitem__(self, index: int, /) -> Any: ...


# Portable SQL over the metric tables (both engines run these fragments as they are).
ROLLUP_VALUES = ", ".join(f"{c}_sum, {c}_max" for c in COLUMNS.values())
"""The value columns of ``metric_rollups``, in :meth:`Bucket.of_row` order."""
ROLLUP_AGGREGATES = ", ".join(f"SUM({c}_sum), MAX({c}_max)" for c in COLUMNS.values())
RAW_AS_ROLLUP = ", ".join(f"{c}, {c}" for c in COLUMNS.values())
"""A raw sample's values as a one-sample rollup's sums and maxima."""
RAW_AGGREGATES = ", ".join(f"SUM({c}), MAX({c})" for c in COLUMNS.values())

SampleRow = tuple[int, int, int, int, int, str]
"""One sample as stored: (ts in milliseconds, cpu, memory, disk, jobs in tenths, runner id)."""


@dataclass(frozen=True)
class Retention:
    """How long each tier keeps data, in seconds."""

    raw: float = 24 * 3600.0
    five_minute: float = 7 * 86400.0
    total: float = 30 * 86400.0

    @classmethod
    def of(cls, settings: MetricsHistory) -> Retention:
        return cls(
            raw=settings.raw_retention_hours * 3600,
            five_minute=settings.five_minute_retention_days * 86400,
            total=settings.retention_days * 86400,
        )


@dataclass
class Bucket:
    """Sums and maxima are in stored units (tenths): divide by :data:`SCALE`."""

    start: int
    """Epoch seconds, aligned to the resolution."""
    samples: int
    sums: dict[str, int]
    maxima: dict[str, int]

    def average(self, name: str) -> float:
        return self.sums[name] / self.samples

    @classmethod
    def of_row(cls, row: Row) -> Bucket:
        """From an aggregate row: (start, samples, then sum and maximum of each series in :data:`COLUMNS` order)."""
        sums = {name: int(row[2 + 2 * i]) for i, name in enumerate(COLUMNS)}
        maxima = {name: int(row[3 + 2 * i]) for i, name in enumerate(COLUMNS)}
        return cls(int(row[0]), int(row[1]), sums, maxima)


@dataclass
class History:
    buckets: list[Bucket]
    jobs_executed: int

    @property
    def samples(self) -> int:
        return sum(b.samples for b in self.buckets)

    def average(self, name: str) -> float | None:
        count = self.samples
        return sum(b.sums[name] for b in self.buckets) / count if count else None

    def maximum(self, name: str) -> float | None:
        return max((b.maxima[name] for b in self.buckets), default=None)


@dataclass
class Compaction:
    raw_rolled: int = 0
    five_minute_rolled: int = 0
    expired: int = 0

    def add(self, other: Compaction) -> None:
        self.raw_rolled += other.raw_rolled
        self.five_minute_rolled += other.five_minute_rolled
        self.expired += other.expired


@dataclass
class JobTiming:
    status: str
    duration: float | None
    steps: list[tuple[str, float]] = field(default_factory=list)
    """(status, seconds) of every step of every attempt that started and ended."""


@dataclass(frozen=True)
class Cutoffs:
    """What one compaction pass moves: raw samples before ``raw_before_ms`` (a whole 5-minute bucket), 5-minute
    rollups before ``five_before`` (a whole hour), and hourly rollups before ``expire_before`` (whole hours)."""

    raw_before_ms: int
    five_before: int
    expire_before: int

    @classmethod
    def at(cls, now: float, retention: Retention) -> Cutoffs:
        return cls(
            raw_before_ms=int((now - retention.raw) // FIVE_MINUTES * FIVE_MINUTES) * 1000,
            five_before=int((now - retention.five_minute) // HOUR * HOUR),
            expire_before=int(now - retention.total) // HOUR * HOUR,  # whole hours past retention only
        )


@dataclass(frozen=True)
class SlotWindow:
    """The 5-minute slots an uptime figure counts: ``first`` to ``last`` (slot numbers), whose samples lie in
    [``low``, ``high``) (epoch seconds)."""

    first: int
    last: int

    @classmethod
    def of(cls, start: float, now: float) -> SlotWindow:
        return cls(int(start // SLOT), int(now // SLOT))

    @property
    def low(self) -> int:
        return self.first * SLOT

    @property
    def high(self) -> int:
        return (self.last + 1) * SLOT

    def share(self, present: set[int], hourly: dict[int, int]) -> float:
        """The uptime percentage, from the slots with samples (raw or 5-minute rollups) and the hourly rollups
        (their start → how many of their slots had samples)."""

        # An hourly rollup says how many of its 5-minute slots had samples, not which: the hour that holds the
        # window's start counts whole (there are no samples before registration; at the 30-day edge it is at
        # most 11 slots of 8,640).
        def has_samples(slot: int) -> bool:
            return slot in present or slot * SLOT // HOUR * HOUR in hourly

        total = self.last - self.first + 1
        # The slots at either end are only partly inside the window (registration, now): they count when they
        # hold a sample, and are left out otherwise, so a runner is not charged for the minutes before its first.
        if not has_samples(self.first):
            total -= 1
        if self.last != self.first and not has_samples(self.last):
            total -= 1
        if total <= 0:
            return 0.0
        return round(min(100.0, 100.0 * (len(present) + sum(hourly.values())) / total), 2)


def tenths(value: float) -> int:
    return round(value * SCALE)


def sample_rows(batch: Sequence[tuple[str, Sequence[MetricSample], float]], retention: Retention) -> list[SampleRow]:
    """The samples of many heartbeats as stored, without the ones too old to keep or from the future."""
    rows: list[SampleRow] = []
    for runner_id, samples, now in batch:
        oldest, newest = now - retention.total, now + MAX_CLOCK_SKEW
        rows.extend(
            (
                int(s.at.timestamp() * 1000),
                tenths(s.cpu_usage),
                tenths(s.memory_usage),
                tenths(s.disk_usage),
                s.active_jobs * SCALE,
                runner_id,
            )
            for s in samples
            if oldest <= s.at.timestamp() <= newest
        )
    return rows


class MetricHistory(abc.ABC):
    """What every engine's metric store shares; the engine implements the storage hooks and the queries."""

    def __init__(self, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        # Uptime per runner, read on every ``GET /runners/{id}``: kept for UPTIME_CACHE_TTL seconds (it counts
        # 5-minute slots) and dropped when this process stores the runner's samples.
        self._uptime: dict[str, tuple[float, float]] = {}

    # --- storage hooks ---------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _insert(self, rows: Sequence[SampleRow]) -> int:
        """Store samples of known runners, skipping ones already stored; how many were new."""

    @abc.abstractmethod
    async def _slots(self, runner_id: str, window: SlotWindow) -> tuple[set[int], dict[int, int]] | None:
        """For :meth:`SlotWindow.share`: the window's slots with samples or 5-minute rollups, and its hourly
        rollups (from the hour holding ``window.low``) as start → slots; ``None`` for an unknown runner."""

    @abc.abstractmethod
    async def _runner_keys(self) -> list[int]:
        """Every runner's row key (what the metric tables store)."""

    @abc.abstractmethod
    async def _compact_runner(self, runner: int, cutoffs: Cutoffs) -> Compaction:
        """Move one runner's whole buckets down a tier, in one transaction."""

    # --- queries -------------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def history(self, runner_id: str, start: float, end: float, resolution: int) -> History | None:
        """Buckets of ``resolution`` seconds (aligned to the epoch) holding data in [start, end], and the jobs that
        finished then. ``None`` for an unknown runner. Older data answers at the resolution it was kept in."""

    @abc.abstractmethod
    async def registry_counts(self) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        """Runners by (status, type) and open jobs (queued, running) by status, counted now."""

    @abc.abstractmethod
    async def job_timings(self, job_ids: Sequence[str]) -> list[JobTiming]:
        """Status and run time of finished jobs, with their steps' run times."""

    @abc.abstractmethod
    async def event_mark(self, runner_id: str) -> int:
        """The runner's applied-event high-water mark (0 for an unknown runner)."""

    # --- samples -------------------------------------------------------------------------------------------

    async def add_samples(self, runner_id: str, samples: Sequence[MetricSample], now: float) -> int:
        """Store samples; ones already stored (a resent heartbeat), too old to keep, or from the future are
        skipped. Returns how many were new."""
        return await self.add_sample_batch([(runner_id, samples, now)])

    async def add_sample_batch(self, batch: Sequence[tuple[str, Sequence[MetricSample], float]]) -> int:
        """The samples of many heartbeats (runner id, samples, when received) in one transaction."""
        rows = sample_rows(batch, self.retention)
        if not rows:
            return 0
        added = await self._insert(rows)
        for runner_id, _, _ in batch:
            self._uptime.pop(runner_id, None)
        return added

    # --- uptime --------------------------------------------------------------------------------------------

    async def uptime_percentage(self, runner_id: str, registered_at: float, now: float) -> float:
        """Share of the retention window (or the time since registration, if shorter) with samples."""
        cached = self._uptime.get(runner_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        window = SlotWindow.of(max(registered_at, now - self.retention.total), now)
        found = await self._slots(runner_id, window)
        value = 0.0 if found is None else window.share(*found)
        if len(self._uptime) > UPTIME_CACHE_SIZE:
            self._uptime.clear()
        self._uptime[runner_id] = (time.monotonic() + UPTIME_CACHE_TTL, value)
        return value

    # --- compaction ----------------------------------------------------------------------------------------

    async def compact_forever(self, interval: float) -> None:
        """Compact now and then every ``interval`` seconds (the app owns this task and cancels it on shutdown)."""
        while True:
            try:
                done = await self.compact(time.time())
                if done.raw_rolled or done.five_minute_rolled or done.expired:
                    log.info(
                        "metric history compacted",
                        raw_rolled=done.raw_rolled,
                        five_minute_rolled=done.five_minute_rolled,
                        expired=done.expired,
                    )
            except Exception:
                log.exception("metric history compaction failed; retrying at the next interval")
            await asyncio.sleep(interval)

    async def compact(self, now: float) -> Compaction:
        """Roll whole buckets down a tier and expire what is past retention, one transaction per runner (so it
        never holds the database for long)."""
        cutoffs = Cutoffs.at(now, self.retention)
        total = Compaction()
        for runner in await self._runner_keys():
            total.add(await self._compact_runner(runner, cutoffs))
        return total
