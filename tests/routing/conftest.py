"""Routing tests run a coordinator whose calls to agents wait long enough for a late answer to be exercised."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import CoordinatorHandle, coordinator_config, running_coordinator


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[CoordinatorHandle]:
    config = coordinator_config(tmp_path / "coordinator", agents={"request_timeout": 10.0})
    async with running_coordinator(config) as handle:
        yield handle
