"""The API suite runs on both engines: the ``coordinator`` fixture here stores in SQLite, then in PostgreSQL.

A test that reads the SQLite file itself (its tables, through ``coordinator.store.db``) is marked
``sqlite_only``; it runs on SQLite alone.
"""

from __future__ import annotations

import pytest

from tests.store_support import ENGINES, engine_parameter


@pytest.fixture(params=ENGINES)
def database_engine(request: pytest.FixtureRequest) -> str:
    """Each engine in turn (see ``tests/store_support.engine_parameter``)."""
    return engine_parameter(request)
