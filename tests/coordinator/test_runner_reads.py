"""Runner reads and heartbeats: membership, serialised views and deferred heartbeat writes stay true to the
database, on either engine."""

from __future__ import annotations

import json
import time

from coordinator.api.views import runner_json, runner_list_json
from coordinator.store.base import RunnerChanges, RunnerFilter, RunnerRecord
from shared.models import CurrentLoad, RunnerList
from tests.store_support import StoreDatabase


def _runner(n: int, type_: str = "native") -> RunnerRecord:
    now = time.time()
    return RunnerRecord(
        id=f"runner-{n:03d}",
        name=f"r{n}",
        type=type_,
        status="active",
        host="127.0.0.1",
        port=9000 + n,
        token=f"token-{n:03d}-0123456789",
        registered_at=now,
        last_seen=now,
        heartbeat_interval=10.0,
        tags=["a", f"t{n % 2}"],
        metadata={"zone": "é"},
    )


async def test_pages_and_counts_follow_registrations_status_changes_and_deletes(
    store_database: StoreDatabase,
) -> None:
    store = await store_database.open()
    for n in range(10):
        await store.insert_runner(_runner(n, "docker" if n % 3 == 0 else "native"))
    page, total = await store.list_runners(RunnerFilter(), 4, 3)
    assert total == 10 and [r.id for r in page] == [f"runner-{n:03d}" for n in range(3, 7)]
    native, _ = await store.list_runners(RunnerFilter(type="native"), 50, 0)
    assert {r.id for r in native} == {f"runner-{n:03d}" for n in range(10) if n % 3}
    # A heartbeat that ends a runner's quiet spell, a stale mark and a delete all change what matches.
    await store.record_heartbeat("runner-001", CurrentLoad(), "error", 10.0, time.time())
    errored, _ = await store.list_runners(RunnerFilter(status="error"), 50, 0)
    assert [r.id for r in errored] == ["runner-001"]
    await store.update_runner("runner-002", RunnerChanges(last_seen=time.time() - 100), time.time())
    stale = await store.mark_stale(time.time(), 3.0)
    assert [c.runner_id for c in stale] == ["runner-002"]
    page, inactive = await store.list_runners(RunnerFilter(status="inactive"), 50, 0)
    assert inactive == 1 and page[0].status == "inactive"
    await store.delete_runner("runner-004")
    page, total = await store.list_runners(RunnerFilter(status="active"), 50, 0)
    assert total == 7 and "runner-004" not in {r.id for r in page}
    await store.insert_runner(_runner(10))
    _, total = await store.list_runners(RunnerFilter(tags=["t0"]), 50, 0)
    assert total == 5  # 0, 2, 6, 8, 10 (4 was deleted)
    page, total = await store.list_runners(RunnerFilter(), 50, 100)
    assert page == [] and total == 10


async def test_the_serialised_list_is_the_runner_list_model(store_database: StoreDatabase) -> None:
    store = await store_database.open()
    await store.insert_runner(_runner(1))
    page, total = await store.list_runners(RunnerFilter(), 50, 0)
    parsed = RunnerList.model_validate_json(runner_list_json(page, total, False))
    assert parsed.total_count == 1 and not parsed.has_more
    view = parsed.runners[0]
    assert view.metadata["zone"] == "é" and set(view.metadata) == {"zone", "registered_at", "last_seen"}
    assert view.current_load == CurrentLoad() and view.tags == ["a", "t1"]
    assert json.loads(runner_json(page[0]))["statistics"] is None
    # A write makes a new record, so the memoised view never outlives what it shows.
    await store.update_runner("runner-001", RunnerChanges(name="renamed"), time.time())
    again, _ = await store.list_runners(RunnerFilter(), 50, 0)
    assert json.loads(runner_json(again[0]))["name"] == "renamed"


async def _row(database: StoreDatabase, runner_id: str) -> tuple[float, str]:
    """The runner's heartbeat columns as committed."""
    last_seen = await database.scalar("SELECT last_seen FROM runners WHERE id = ?", runner_id)
    load = await database.scalar("SELECT load FROM runners WHERE id = ?", runner_id)
    return float(last_seen), str(load)


async def test_heartbeats_are_seen_at_once_written_in_one_batch_and_judged_by_liveness(
    store_database: StoreDatabase,
) -> None:
    store = await store_database.open()
    for n in range(3):
        await store.insert_runner(_runner(n))
    registered = (await _row(store_database, "runner-001"))[0]
    later = registered + 50
    for n in range(3):
        change = await store.record_heartbeat(f"runner-{n:03d}", CurrentLoad(active_jobs=2), "active", 20.0, later)
        assert change is not None and change.old_status == change.new_status == "active"
    assert await store.record_heartbeat("runner-999", CurrentLoad(), "active", 20.0, later) is None
    # Readers see the heartbeat before it is written...
    runner = await store.get_runner("runner-001")
    assert runner is not None and runner.last_seen == later and runner.load.active_jobs == 2
    page, _ = await store.list_runners(RunnerFilter(), 50, 0)
    assert json.loads(runner_json(page[1]))["current_load"]["active_jobs"] == 2
    assert (await _row(store_database, "runner-001"))[0] == registered
    # ...and liveness judges by it: 50 s after registration with a 10 s interval, only the new interval
    # and last_seen (written first, in the same transaction) keep the runners active.
    assert await store.mark_stale(later + 1, 3.0) == []
    assert (await _row(store_database, "runner-001"))[0] == later
    # The next beats wait for a flush, which writes them all at once.
    for n in range(3):
        await store.record_heartbeat(f"runner-{n:03d}", CurrentLoad(cpu_usage=5.0), "active", 20.0, later + 10)
    assert store.pending_heartbeats == 3  # both engines batch heartbeats
    assert await store.flush_heartbeats() == 3
    assert await _row(store_database, "runner-002") == (later + 10, CurrentLoad(cpu_usage=5.0).model_dump_json())
    # A runner that went quiet comes back with a transition written (and reported) at once.
    stale = await store.mark_stale(later + 200, 3.0)
    assert {c.runner_id for c in stale} == {"runner-000", "runner-001", "runner-002"}
    back = await store.record_heartbeat("runner-000", CurrentLoad(), "active", 20.0, later + 201)
    assert back is not None and (back.old_status, back.new_status) == ("inactive", "active")
    assert store.pending_heartbeats == 0
    assert (await _row(store_database, "runner-000"))[0] == later + 201
    active, total = await store.list_runners(RunnerFilter(status="active"), 50, 0)
    assert total == 1 and active[0].id == "runner-000"
    # Closing writes what is pending.
    await store.record_heartbeat("runner-000", CurrentLoad(), "active", 20.0, later + 210)
    await store_database.close()
    assert (await _row(store_database, "runner-000"))[0] == later + 210
