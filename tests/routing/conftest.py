"""Routing tests run a coordinator whose calls to agents wait long enough for a late answer to be exercised, on
each engine (the fleet-job store is the routing's record)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import CoordinatorHandle, coordinator_config, running_coordinator
from tests.store_support import ENGINES, engine_parameter


@pytest.fixture(params=ENGINES)
def database_engine(request: pytest.FixtureRequest) -> str:
    """Each engine in turn (see ``tests/store_support.engine_parameter``)."""
    return engine_parameter(request)


@pytest.fixture
async def coordinator(tmp_path: Path, coordinator_database: str | None) -> AsyncIterator[CoordinatorHandle]:
    overrides = {"database": coordinator_database} if coordinator_database else {}
    config = coordinator_config(tmp_path / "coordinator", agents={"request_timeout": 10.0}, **overrides)
    async with running_coordinator(config) as handle:
        yield handle
