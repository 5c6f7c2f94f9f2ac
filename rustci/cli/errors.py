"""What the command line reports as one line on stderr, and the exit status that goes with it."""

from __future__ import annotations

# Exit statuses (also in docs/api.md, "Command line").
OK = 0
FAILED = 1
"""An API error, an unreachable coordinator, a job that failed without a step's exit code."""
USAGE = 2
"""Bad arguments, a job file that cannot be read, a URL that cannot be used."""
JOB_TIMED_OUT = 124
"""``jobs submit --wait``: the job ran past its timeout (as timeout(1) exits)."""
JOB_CANCELLED = 130
"""``jobs submit --wait``: the job was cancelled (as a shell reports a command ended by Ctrl-C)."""


class CliError(Exception):
    """A failure the CLI explains itself; ``str()`` is the line printed after ``rustci: ``."""

    def __init__(self, message: str, exit_code: int = USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
