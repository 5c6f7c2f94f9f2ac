"""A step's script as a file: how every executor hands a step its commands.

A script passed as an argument (``sh -c <script>``) is bounded by the kernel's limit on one argument
(``MAX_ARG_STRLEN``, 128 KiB): a longer one cannot even start (``Argument list too long``). Written to a file in
the attempt's workspace and run as ``sh <file>``, a step's script can be as long as the API allows
(1,000,000 characters).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.executors.base import ExecutorError, StepContext

SCRIPTS_DIR = ".rustci"
"""Directory of the workspace the step scripts are written to (kept with the workspace, for a look after)."""


def step_script_name(index: int) -> str:
    """The script's path relative to the workspace."""
    return f"{SCRIPTS_DIR}/step-{index}.sh"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(text, encoding="utf-8")


async def write_step_script(workspace: Path, step: StepContext) -> str:
    """Write the step's script into ``workspace``; returns its path relative to the workspace."""
    name = step_script_name(step.index)
    try:
        if len(step.spec.run) > 64 * 1024:
            await asyncio.to_thread(_write, workspace / name, step.spec.run)
        else:
            _write(workspace / name, step.spec.run)
    except (OSError, UnicodeError, ValueError) as e:
        raise ExecutorError(f"cannot write the script of step '{step.spec.name}': {e}") from e
    return name


def check_environment(environment: dict[str, str], step: str) -> None:
    """Refuse, with a reason, what no process can be started with (a NUL byte in a name or value, ``=`` in a
    name), before any executor tries to."""
    for name, value in environment.items():
        if "\0" in name or "\0" in value or "=" in name or not name:
            raise ExecutorError(f"cannot start step '{step}': invalid environment variable {name!r}")
