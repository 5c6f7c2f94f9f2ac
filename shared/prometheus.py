"""What both daemons' ``/metrics`` share: the registry with process and Python collectors and the build info.

Each daemon (each app, so two in one test process count apart) gets its own ``CollectorRegistry`` from
:func:`daemon_registry`, holding:

- ``process_*`` (CPU seconds, resident memory, open file descriptors, start time) and ``python_info``,
  ``python_gc_*``: the collectors ``prometheus_client`` ships;
- ``rustci_build_info{version, python}`` = 1, so a dashboard can tell which release each process runs.

``*_created`` series are turned off for the whole process: they double every counter and histogram for a
value (when the series was first seen) that ``process_start_time_seconds`` already gives.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.version import version

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class BuildInfo(Collector):
    def __init__(self, component: str) -> None:
        self.component = component

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "rustci_build_info",
            "Always 1: the release of this process, in its labels.",
            labels=["version", "component", "python"],
        )
        info.add_metric([version(), self.component, platform.python_version()], 1)
        yield info


def daemon_registry(component: str) -> CollectorRegistry:
    """A fresh registry with the process, platform, GC and build collectors registered."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(BuildInfo(component))
    return registry
