"""structlog set-up for the daemons: JSON lines in production, readable lines on a terminal.

Libraries never call this; each daemon's CLI does, once, and again when a config reload changes the level or
the format. Every line names its ``component`` (``coordinator``, ``agent``), so the lines of several daemons
in one journal or one collector can be told apart.

The level is applied by the first processor rather than by structlog's filtering wrapper, and the processor
list is one list changed in place: loggers cached on first use then follow a reload too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "console", "auto"]

_state: dict[str, Any] = {"level": logging.INFO, "component": None}
_processors: list[structlog.types.Processor] = []


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
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Route the standard library's records (aiohttp, asyncio) through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
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
