"""A daemon started by a launcher ends when the launcher does, however it died (SIGKILL included).

The launcher (``rustci local up``) gives each child the reading end of a pipe whose writing end only the
launcher holds, and names its descriptor in ``RUSTCI_PARENT_FD``. Nothing is ever written to it: the pipe
becomes readable (end of file) exactly when the launcher's last descriptor closes, that is, when it exits.
The daemon then stops as on its first SIGTERM, draining its work. A pipe, not Linux's parent-death signal:
that signal fires again for every thread of the parent that exits, and a second SIGTERM means "cancel now".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

ENV = "RUSTCI_PARENT_FD"


def child_end() -> tuple[int, int]:
    """For the launcher: ``(read_fd, write_fd)``; pass ``read_fd`` to the child, keep ``write_fd`` open."""
    return os.pipe()


def watch(loop: asyncio.AbstractEventLoop, on_parent_exit: Callable[[], None]) -> bool:
    """Call ``on_parent_exit`` once when the launcher named by ``RUSTCI_PARENT_FD`` exits; ``False`` if no
    launcher started this process. The variable is removed, so the daemon's own children never see it."""
    raw = os.environ.pop(ENV, None)
    if not raw:
        return False
    try:
        fd = int(raw)
        os.set_inheritable(fd, False)
    except (ValueError, OSError):
        return False

    def parent_exited() -> None:
        loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        on_parent_exit()

    loop.add_reader(fd, parent_exited)
    return True
