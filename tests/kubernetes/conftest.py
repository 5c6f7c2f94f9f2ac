"""The emulated cluster (see ``tests/kubernetes/cluster.py``) as a fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.kubernetes.cluster import EmulatedCluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[EmulatedCluster]:
    root = tmp_path / "cluster"
    root.mkdir()
    async with EmulatedCluster(root) as emulated:
        yield emulated
