"""structlog set-up for the daemons: JSON lines in production, readable lines on a terminal.

Libraries never call this; each daemon's CLI does, once, and again when a config reload changes the level or
the format. Every line names its ``component`` (``coordinator``, ``agent``), so the lines of several daemons
in one journal or one collector can be told apart.

The level is applied by the first processor rather than by structlog's filtering wrapper, and the processor
list is one list changed in place: loggers cached on first use then follow a reload too.

Logging never raises into its caller. A daemon whose stderr went away (a closed pipe, a full disk, a launcher
that died) keeps serving and still stops on a signal: a line that cannot be rendered or written is dropped
and counted, and both daemons export the count as ``rustci_log_lines_dropped_total``.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any, Literal

import structlog
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

LogFormat = Literal["json", "console", "auto"]

_state: dict[str, Any] = {"level": logging.INFO, "component": None}
_processors: list[structlog.types.Processor] = []
_dropped = 0
_dropped_lock = threading.Lock()


def _drop() -> None:
    global _dropped
    with _dropped_lock:
        _dropped += 1


def dropped_lines() -> int:
    """Log lines this process could not render or write since it started."""
    return _dropped


class DroppedLines(Collector):
    """``rustci_log_lines_dropped_total``, for a daemon's own Prometheus registry."""

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "rustci_log_lines_dropped", "Log lines dropped because they could not be written.", value=dropped_lines()
        )


class _DroppingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The standard library's handler, counting a failed write instead of printing a traceback about it."""

    def handleError(self, record: logging.LogRecord) -> None:
        _drop()


def _never_raising(level: int) -> type[Any]:
    """The filtering bound logger for ``level``, whose calls drop and count a line instead of raising."""
    base: type[Any] = structlog.make_filtering_bound_logger(level)

    class NeverRaising(base):  # type: ignore[misc]
        def _proxy_to_logger(self, method_name: str, event: str | None = None, **event_kw: Any) -> Any:
            try:
                return super()._proxy_to_logger(method_name, event, **event_kw)
            except Exception:  # a closed or full stderr, an unrenderable value: never the caller's problem
                _drop()
                return None

    return NeverRaising


def enabled_for(level: int) -> bool:
    """Whether a line at ``level`` (``logging.DEBUG``...) is written now; for work done only to log."""
    return bool(level >= _state["level"])


# structlog's method names; looked up on every line, so built once (getLevelNamesMapping copies a dict per call).
_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def _at_level(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _METHOD_LEVELS.get(method, logging.INFO) < _state["level"]:
        raise structlog.DropEvent
    return event


def _component(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _state["component"]:
        event.setdefault("component", _state["component"])
    return event


def configure(level: str = "info", fmt: LogFormat = "auto", component: str | None = None) -> None:
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    _state["level"] = numeric
    if component is not None:
        _state["component"] = component
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        _component,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    _processors[:] = [
        _at_level,
        *shared_processors,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=_processors,
        wrapper_class=_never_raising(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Route the standard library's records (aiohttp, asyncio) through the same renderer.
    handler = _DroppingStreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[*shared_processors, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
