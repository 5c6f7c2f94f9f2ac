"""docs/operations.md: every ``rustci`` command it tells an operator to run is one the CLI accepts, and the
sections it promises are there."""

from __future__ import annotations

import re
import shlex

import pytest

from rustci import cli
from tests.helpers import REPO

DOC = REPO / "docs" / "operations.md"


def commands() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("rustci "):
                found.append(line)
    # Inline ones too, where they are a whole command (prose also names bare commands: `rustci runners stop`).
    found += [c for c in re.findall(r"`(rustci [^`]+)`", text) if len(c.split()) > 3]
    return found


def test_the_sections_are_there() -> None:
    headings = re.findall(r"^## (.+)$", DOC.read_text(encoding="utf-8"), flags=re.M)
    for wanted in (
        "Installing a runner host",
        "Upgrading without losing jobs",
        "Backing up and restoring the SQLite databases",
        "Log levels and JSON logs",
        "Reading the metrics",
        "Troubleshooting an unavailable runner",
        "Moving from SQLite to PostgreSQL",
        "Running several coordinators",
    ):
        assert wanted in headings, wanted


def test_the_store_migration_it_shows_is_the_coordinators_own_command() -> None:
    from coordinator.cli import main

    text = DOC.read_text(encoding="utf-8")
    assert "migrate-store --to postgresql://" in text
    with pytest.raises(SystemExit) as usage:
        main(["migrate-store", "--help"])
    assert usage.value.code == 0


@pytest.mark.parametrize("command", commands())
def test_each_rustci_command_parses(command: str) -> None:
    args = cli.build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.handler)
