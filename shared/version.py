"""The release this code is, as installed (``pyproject.toml``'s version), for ``--version`` and build metrics."""

from __future__ import annotations

from functools import cache
from importlib import metadata

DISTRIBUTION = "rustci-runner"


@cache
def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"
