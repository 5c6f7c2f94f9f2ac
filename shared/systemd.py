"""The systemd notification protocol (``sd_notify``) for ``Type=notify`` units, over ``$NOTIFY_SOCKET``.

A daemon tells the service manager ``READY=1`` once it serves, ``STATUS=...`` lines saying what it is doing
(``systemctl status`` shows the last one), ``RELOADING=1`` / ``READY=1`` around a config reload,
``STOPPING=1`` when it begins to shut down, and ``WATCHDOG=1`` keep-alives. With ``WatchdogSec=`` set, systemd
passes ``WATCHDOG_USEC`` and restarts the service when the keep-alives stop; they are sent from the event loop
at half that interval (:meth:`Notifier.keepalive_forever`), so a loop blocked for longer than ``WatchdogSec``
gets the daemon restarted.

The protocol is one datagram per message, ``KEY=VALUE`` lines, on an ``AF_UNIX`` socket whose path is in
``NOTIFY_SOCKET`` (a leading ``@`` means Linux's abstract namespace). Without ``NOTIFY_SOCKET`` (not run by
systemd, or ``Type=simple``) every call does nothing. Sending never blocks and never raises: the service
manager being away must not stop a daemon.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)

STATUS_INTERVAL = 5.0
"""Seconds between looks at what a daemon is doing, for ``STATUS=``, when no watchdog sets the pace."""


def _address(value: str) -> str | bytes:
    return b"\0" + value[1:].encode() if value.startswith("@") else value


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between keep-alives (half of ``WATCHDOG_USEC``), or None when no watchdog is asked for this
    process (``WATCHDOG_PID``, when set, names the process the watchdog is meant for)."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000


class Notifier:
    """Messages to the service manager. ``Notifier.from_environment()`` in a daemon's CLI, once."""

    def __init__(self, socket_path: str | None, watchdog: float | None = None) -> None:
        self.address = _address(socket_path) if socket_path else None
        self.watchdog = watchdog
        """Seconds between keep-alives, or None for no watchdog."""
        self._socket: socket.socket | None = None
        self._failed = False
        self._status = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        environ = os.environ if environ is None else environ
        return cls(environ.get("NOTIFY_SOCKET") or None, watchdog_interval(environ))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str) -> bool:
        """Send one message (``ready="1"`` is ``READY=1``); False when it could not be sent or nobody listens."""
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as e:
            if not self._failed:  # once: a daemon under a gone manager would otherwise log every tick
                log.warning("cannot notify the service manager", socket=os.environ.get("NOTIFY_SOCKET"), error=str(e))
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> None:
        self._status = status
        self.notify(ready="1", status=status)

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self.notify(status=status)

    def reloading(self) -> None:
        self.notify(reloading="1", status="reloading the configuration")

    def stopping(self, status: str = "stopping") -> None:
        self._status = status
        self.notify(stopping="1", status=status)

    async def keepalive_forever(self, status: Callable[[], str] | None = None) -> None:
        """Until cancelled: ``WATCHDOG=1`` every half ``WatchdogSec``, from the event loop, and ``STATUS=`` when
        ``status()`` says something new (every ``STATUS_INTERVAL`` seconds without a watchdog). Returns at
        once when there is nothing to send."""
        if self.address is None or (self.watchdog is None and status is None):
            return
        interval = self.watchdog or STATUS_INTERVAL
        while True:
            if self.watchdog is not None:
                self.notify(watchdog="1")
            if status is not None:
                self.status(status())
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
