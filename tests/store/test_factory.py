"""Choosing the engine: ``database`` is a path or a ``postgresql://`` URL, and one factory builds every store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.config import CoordinatorConfig
from coordinator.store import factory
from coordinator.store.base import RunnerChanges
from tests.helpers import REPO, free_port
from tests.test_footprint import _loaded


def test_a_path_is_sqlite_and_a_url_is_postgresql(tmp_path: object) -> None:
    assert CoordinatorConfig().database_engine == "sqlite"
    assert CoordinatorConfig(database="/var/lib/rustci/c.db").database_path.name == "c.db"
    url = "postgresql://rustci:hunter2@db.example:5432/rustci"
    config = CoordinatorConfig(database=url, database_pool={"min_size": 2, "max_size": 20})
    assert config.database_engine == "postgresql" and config.database_url == url
    assert (config.database_pool.min_size, config.database_pool.max_size) == (2, 20)
    assert "hunter2" not in config.database_name and config.database_name.startswith("postgresql://rustci:")
    assert CoordinatorConfig(database="postgres://db.example/rustci").database_engine == "postgresql"
    with pytest.raises(ValueError):
        config.database_path  # noqa: B018


@pytest.mark.parametrize(
    ("database", "pool"),
    [
        ("mysql://db.example/rustci", {}),  # an engine there is no store for
        ("postgresql://db.example", {}),  # no database named
        ("postgresql:///rustci", {}),  # no host
        (None, {"min_size": 5, "max_size": 2}),
        (None, {"max_size": 0}),
    ],
)
def test_a_database_the_coordinator_cannot_use_is_a_configuration_error(database: str | None, pool: object) -> None:
    with pytest.raises(ValueError):
        CoordinatorConfig(database=database, database_pool=pool)


def test_the_sqlite_stores_share_one_database_and_never_load_the_postgresql_driver() -> None:
    loaded = _loaded(
        "from coordinator.config import CoordinatorConfig\nfrom coordinator.store import factory\n"
        "import tempfile, pathlib\n"
        "stores = factory.build(CoordinatorConfig(state_dir=pathlib.Path(tempfile.mkdtemp())), None)\n"
        "assert stores.fleet.db is stores.registry.db and stores.metrics.db is stores.registry.db"
    )
    assert "asyncpg" not in loaded and "coordinator.store.postgres" not in loaded


async def test_a_postgresql_url_builds_every_store_on_postgresql(postgres_url: str) -> None:
    config = CoordinatorConfig(database=postgres_url, database_pool={"min_size": 1, "max_size": 3})
    stores = factory.build(config, None)
    assert stores.shared is not None, "the database several coordinators share reaches the fleet seams"
    assert {type(member).__module__.split(".")[2] for member in (stores.registry, stores.fleet, stores.metrics,
            stores.logs, stores.audit)} == {"postgres"}  # fmt: skip
    await stores.open()
    try:
        assert await stores.registry.update_runner("nobody", RunnerChanges(name="x"), 0.0) is None
        assert await stores.registry.storage_problem() is None
    finally:
        await stores.close()


def test_runner_changes_name_what_they_set_and_store_lists_as_json() -> None:
    changes = RunnerChanges(name="n", tags=["a", "b"], metadata={"k": 1}, last_seen=5.0)
    assert changes.names() == ["name", "tags", "metadata", "last_seen"]
    assert changes.stored() == {"name": "n", "tags": '["a", "b"]', "metadata": '{"k": 1}', "last_seen": 5.0}
    assert changes.changes_membership and not RunnerChanges(name="n").changes_membership
    assert RunnerChanges().names() == []


def test_a_coordinator_whose_database_cannot_be_used_stops_with_one_line(tmp_path: Path) -> None:
    environment = {
        **os.environ,
        "RUSTCI_STATE_DIR": str(tmp_path / "state"),
        "RUSTCI_DATABASE": f"postgresql://rustci:pw@127.0.0.1:{free_port()}/rustci",
        "RUSTCI_LISTEN_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "coordinator"], cwd=REPO, env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("rustci-coordinator: database") and "Traceback" not in done.stderr
    assert ":pw@" not in done.stderr + done.stdout
