"""The runner's state and whether the agent takes jobs: two facts with one owner.

The state the coordinator shows (``running``, ``stopped``, ``starting``, ``restarting``, ``error``) and whether
the supervisor starts jobs must never disagree, so nothing sets them apart: every change is one of the verbs
below, which sets both together and announces the change (a log line, and the listener the daemon gives,
which tells the coordinator at the next heartbeat).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog

from shared.models import AgentState

log = structlog.get_logger(__name__)


class Accepting(Protocol):
    """What the owner drives: the supervisor's switch for starting queued jobs."""

    accepting: bool

    def resume_accepting(self) -> None:
        """Take jobs again and start the waiting ones at once."""


class RunnerState:
    def __init__(self, jobs: Accepting, on_change: Callable[[AgentState], None] | None = None) -> None:
        self._jobs = jobs
        self._on_change = on_change
        self._state: AgentState = "starting"

    @property
    def state(self) -> AgentState:
        return self._state

    @property
    def accepting(self) -> bool:
        return self._jobs.accepting

    # --- the verbs -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Running: jobs are taken."""
        self._set("running", accepting=True)

    def stop(self) -> None:
        """Stopped (by the API, a signal or a shutdown): no new job starts; running ones are the caller's."""
        self._set("stopped", accepting=False)

    def error(self) -> None:
        """The executor cannot run jobs: none is taken until :meth:`recovered`."""
        self._set("error", accepting=False)

    def recovered(self) -> bool:
        """Back from ``error`` to running; a runner stopped meanwhile stays stopped. ``True`` if it changed."""
        if self._state != "error":
            return False
        self.start()
        return True

    def transition(self, state: AgentState) -> None:
        """A transitional state (``starting``, ``restarting``) during which no new job starts."""
        self._set(state, accepting=False)

    def _set(self, state: AgentState, *, accepting: bool) -> None:
        before = self._state
        self._state = state
        if accepting:
            self._jobs.resume_accepting()
        else:
            self._jobs.accepting = False
        if before != state:
            log.info("runner state changed", before=before, state=state, accepting=accepting)
            if self._on_change is not None:
                self._on_change(state)
