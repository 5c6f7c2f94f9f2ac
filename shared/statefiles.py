"""What a daemon keeps in its state directory, and how a damaged file is reported.

A damaged state file (an unreadable identity, a database that is not one, a directory where a file belongs)
is an operator's problem, not a bug: the daemon stops with one line naming the file and what to do, and the
documented exit status :data:`EXIT_DAMAGED_STATE`, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

EXIT_DAMAGED_STATE = 4
"""Exit status of a daemon that stopped on a damaged state file (a service manager should not loop on it)."""


class DamagedState(Exception):
    """A file in the state directory cannot be used as it is."""

    def __init__(self, path: Path, problem: str, advice: str) -> None:
        super().__init__(f"{path}: {problem}; {advice}")
        self.path = path
        self.problem = problem
        self.advice = advice
