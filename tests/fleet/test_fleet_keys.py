"""Generated keys shared through the database: coordinators with their own state directories agree on them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from coordinator import auth, fleet_keys
from coordinator.sealing import Sealer
from shared.models import JobSubmission
from tests.conftest import coordinator_config
from tests.fleet.pg import fleet_database

NAMES = list(fleet_keys.GENERATORS)


async def test_concurrent_starts_agree_on_every_key_and_mirror_it_into_their_state_directories(
    postgres_url: str, tmp_path: Path
) -> None:
    async with fleet_database(postgres_url) as pool:
        sources = [fleet_keys.DatabaseKeys(pool, tmp_path / f"coordinator-{i}") for i in range(3)]
        # Every coordinator asks for every key at once: the first insert wins everywhere.
        found = await asyncio.gather(*(source.kept(name) for source in sources for name in NAMES))
        by_name = {name: {found[i * len(NAMES) + j] for i in range(3)} for j, name in enumerate(NAMES)}
        assert all(len(values) == 1 for values in by_name.values()), by_name
        for source in sources:
            for name in NAMES:
                assert fleet_keys.read_key(source.state_dir / name) == next(iter(by_name[name]))
                assert (source.state_dir / name).stat().st_mode & 0o777 == 0o600


async def test_a_second_coordinator_accepts_the_same_credentials_and_unseals_what_the_first_sealed(
    postgres_url: str, tmp_path: Path
) -> None:
    config = {"auth": {"api_key": None, "registration_key": None}}
    a_config = coordinator_config(tmp_path / "a", **config)
    b_config = coordinator_config(tmp_path / "b", **config)
    async with fleet_database(postgres_url) as pool:
        a_keys = fleet_keys.DatabaseKeys(pool, a_config.state_dir)
        b_keys = fleet_keys.DatabaseKeys(pool, b_config.state_dir)
        a = await auth.load_shared_credentials(a_config, a_keys)
        b = await auth.load_shared_credentials(b_config, b_keys)
        assert (a.api_key, a.registration_key, a.jwt_secret) == (b.api_key, b.registration_key, b.jwt_secret)
        assert a.api_key.startswith("rk_")  # generated, not configured
        assert a.registration_key.startswith("reg_")
        spec = JobSubmission.model_validate(
            {
                "name": "sealed",
                "steps": [{"name": "s", "run": "true"}],
                "environment": {"TOKEN": "very-secret-value"},
                "masked": ["TOKEN"],
            }
        )
        a_sealer = Sealer.for_state_dir(a_config.state_dir)  # as each coordinator starts: its own key first
        b_sealer = Sealer.for_state_dir(b_config.state_dir)
        await a_sealer.adopt(a_keys)  # then the fleet's
        await b_sealer.adopt(b_keys)
        stored = a_sealer.seal(spec)
        assert "very-secret-value" not in stored
        assert b_sealer.unseal(stored, "job_1").environment["TOKEN"] == "very-secret-value"


async def test_a_state_directory_with_keys_seeds_a_fresh_database_and_a_differing_one_is_replaced(
    postgres_url: str, tmp_path: Path
) -> None:
    old = tmp_path / "was-sqlite"
    kept = fleet_keys.StateDirKeys(old).kept_now(fleet_keys.ADMIN_API_KEY)  # a coordinator that ran on SQLite
    other = tmp_path / "other"
    fleet_keys.StateDirKeys(other).kept_now(fleet_keys.ADMIN_API_KEY)  # a different key of its own
    async with fleet_database(postgres_url) as pool:
        assert await fleet_keys.DatabaseKeys(pool, old).kept(fleet_keys.ADMIN_API_KEY) == kept
        assert await fleet_keys.DatabaseKeys(pool, other).kept(fleet_keys.ADMIN_API_KEY) == kept
    assert fleet_keys.read_key(other / fleet_keys.ADMIN_API_KEY) == kept
    assert (other / f"{fleet_keys.ADMIN_API_KEY}.replaced").exists()
