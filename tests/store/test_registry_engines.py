"""The registry and job index (``base.Store``), on each engine: the same answers, the same guarantees.

Each test runs on SQLite and on PostgreSQL (``store_database``); where a guarantee is about concurrent writers
(two coordinators on one database), two stores are opened on the same database.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from coordinator.store.base import JobRecord, RunnerChanges, RunnerFilter, RunnerRecord, Store
from shared.models import AgentEvent, CurrentLoad, JobEvent, JobSubmission, LogEvent, StepEvent
from tests.helpers import wait_for
from tests.store_support import StoreDatabase

SECRET = "s3cr3t-value-never-stored-in-clear"


def _runner(n: int, **fields: object) -> RunnerRecord:
    now = time.time()
    record = RunnerRecord(
        id=f"runner-{n:03d}",
        name=f"r{n}",
        type="native",
        status="active",
        host="127.0.0.1",
        port=9000 + n,
        token=f"token-{n:03d}-0123456789",
        registered_at=now,
        last_seen=now,
        heartbeat_interval=10.0,
        tags=["a"],
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def _job(n: int, runner_id: str = "runner-001", **spec: object) -> JobRecord:
    submission = JobSubmission.model_validate({"name": f"job-{n}", "steps": [{"name": "s", "run": "true"}], **spec})
    return JobRecord(id=f"job-{n:03d}", runner_id=runner_id, spec=submission, status="queued", created_at=time.time())


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _job_event(seq: int, job_id: str, status: str, *, final: bool = False, attempt: int = 1) -> JobEvent:
    return JobEvent(seq=seq, job_id=job_id, attempt=attempt, status=status, at=_at(1000.0 + seq), final=final)  # type: ignore[arg-type]


def _log(seq: int, job_id: str, message: str) -> LogEvent:
    return LogEvent(seq=seq, at=_at(1000.0 + seq), level="info", message=message, job_id=job_id, stream="stdout")


async def _with_runner(store: Store, n: int = 1) -> RunnerRecord:
    runner = _runner(n)
    await store.insert_runner(runner)
    return runner


async def test_runners_are_stored_updated_found_by_token_and_deleted(store_database: StoreDatabase) -> None:
    store = await store_database.open()
    runner = _runner(1, metadata={"zone": "eu"}, resources={"cpu_cores": 2}, capabilities=["shell"])
    await store.insert_runner(runner)
    found = await store.get_runner(runner.id)
    assert found is not None
    assert (found.name, found.port, found.metadata, found.resources, found.capabilities) == (
        "r1",
        9001,
        {"zone": "eu"},
        {"cpu_cores": 2},
        ["shell"],
    )
    assert await store.token_owner(runner.token) == runner.id
    assert await store.token_owner("no-such-token") is None
    changes = RunnerChanges(name="renamed", tags=["b", "c"], metadata={"zone": "us"}, heartbeat_interval=5.0)
    updated = await store.update_runner(runner.id, changes, time.time())
    assert updated is not None and updated.name == "renamed" and updated.tags == ["b", "c"]
    assert updated.metadata == {"zone": "us"} and updated.heartbeat_interval == 5.0 and updated.updated_at
    assert updated.port == 9001  # what the changes leave out stays
    assert await store.update_runner("runner-999", RunnerChanges(name="x"), time.time()) is None
    # Another store on the same database (a second coordinator, or this one restarted) sees the same record.
    other = await store_database.open()
    seen = await other.get_runner(runner.id)
    assert seen is not None and seen.name == "renamed" and seen.tags == ["b", "c"]
    assert await store.delete_runner(runner.id)
    assert not await store.delete_runner(runner.id)
    if store_database.engine == "postgresql":  # SQLite: one coordinator per file, which caches its records
        assert await other.get_runner(runner.id) is None


async def test_runner_lists_filter_by_status_type_and_every_tag_in_registration_order(
    store_database: StoreDatabase,
) -> None:
    store = await store_database.open()
    for n in range(12):
        await store.insert_runner(
            _runner(n, type="docker" if n % 3 == 0 else "native", tags=["all", f"mod{n % 2}", *(["x"] * (n > 8))])
        )
    page, total = await store.list_runners(RunnerFilter(), 5, 2)
    assert total == 12 and [r.id for r in page] == [f"runner-{n:03d}" for n in range(2, 7)]
    everything, total = await store.list_runners(RunnerFilter(), None, 0)
    assert total == 12 and len(everything) == 12
    docker, total = await store.list_runners(RunnerFilter(type="docker"), 50, 0)
    assert total == 4 and [r.id for r in docker] == [f"runner-{n:03d}" for n in (0, 3, 6, 9)]
    both, total = await store.list_runners(RunnerFilter(tags=["mod1", "x"]), 50, 0)
    assert total == 2 and [r.id for r in both] == ["runner-009", "runner-011"]
    await store.update_runner("runner-004", RunnerChanges(status="stopped"), time.time())
    stopped, total = await store.list_runners(RunnerFilter(status="stopped", type="native"), 50, 0)
    assert total == 1 and stopped[0].id == "runner-004"
    empty, total = await store.list_runners(RunnerFilter(tags=["nowhere"]), 50, 0)
    assert empty == [] and total == 0
    past, total = await store.list_runners(RunnerFilter(), 10, 100)
    assert past == [] and total == 12


async def test_jobs_queue_deliver_count_and_cancel(store_database: StoreDatabase) -> None:
    store = await store_database.open()
    runner = await _with_runner(store)
    first = await store.insert_job(_job(1))
    assert (first.queued_ahead, first.running_started) == (0, [])
    second = await store.insert_job(_job(2))
    assert second.queued_ahead == 1
    await store.insert_job(_job(3))
    assert await store.held_job_count(runner.id) == 3 and await store.open_job_count(runner.id) == 3
    assert [j.id for j in await store.undelivered_jobs(runner.id, 2)] == ["job-001", "job-002"]
    assert await store.mark_delivered("job-001", runner.id) == "queued"
    assert await store.mark_delivered("job-001", "runner-999") is None
    assert await store.held_job_count(runner.id) == 2
    # A delivered job is the agent's: the coordinator cannot cancel it itself.
    assert await store.cancel_held_job("job-001", "by user", time.time()) is None
    change = await store.cancel_held_job("job-002", "by user", time.time())
    assert change is not None and (change.runner_id, change.old_status, change.new_status) == (
        runner.id,
        "queued",
        "cancelled",
    )
    assert await store.cancel_held_job("job-002", "again", time.time()) is None
    jobs, total = await store.list_jobs(runner.id, None, 2, 0)
    assert total == 3 and [j.id for j in jobs] == ["job-003", "job-002"]  # newest first
    everything, _ = await store.list_jobs(runner.id, None, None, 0)
    assert len(everything) == 3
    cancelled, total = await store.list_jobs(runner.id, "cancelled", 10, 0)
    assert total == 1 and cancelled[0].reason == "by user"
    changes = await store.cancel_open_jobs(runner.id, "runner deleted", time.time())
    assert sorted((c.id, c.old_status) for c in changes) == [("job-001", "queued"), ("job-003", "queued")]
    assert await store.open_job_count(runner.id) == 0
    statistics = await store.statistics(runner.id)
    assert statistics.total_jobs_executed == 3 and statistics.successful_jobs == 0
    # Deleting the runner takes its jobs along.
    assert await store.delete_runner(runner.id)
    assert await store.get_job("job-001") is None


async def test_masked_values_are_sealed_where_the_spec_is_stored(store_database: StoreDatabase) -> None:
    store = await store_database.open()
    await _with_runner(store)
    await store.insert_job(_job(1, environment={"TOKEN": SECRET, "PLAIN": "visible"}, masked=["TOKEN"]))
    stored = str(await store_database.scalar("SELECT spec FROM jobs WHERE id = ?", "job-001"))
    assert SECRET not in stored and "visible" in stored
    job = await store.get_job("job-001")
    assert job is not None and job.spec.environment["TOKEN"] == SECRET


async def test_events_apply_once_in_order_and_a_job_ends_in_one_terminal_state(store_database: StoreDatabase) -> None:
    store = await store_database.open()
    runner = await _with_runner(store)
    await store.insert_job(_job(1))
    batch: list[AgentEvent] = [
        _log(3, "job-001", "second line"),  # out of order in the batch: applied by sequence
        _job_event(1, "job-001", "running"),
        StepEvent(seq=2, job_id="job-001", attempt=1, index=0, name="s", status="running", at=_at(1002)),
        _log(4, "job-001", "third line"),
        StepEvent(seq=5, job_id="job-001", attempt=1, index=0, name="s", status="completed", at=_at(1005), exit_code=0),
        _job_event(6, "job-001", "completed", final=True),
    ]
    applied = await store.apply_events(runner.id, batch)
    assert applied is not None
    mark, changes = applied
    assert mark == 6
    assert [(c.old_status, c.new_status) for c in changes] == [("queued", "running"), ("running", "completed")]
    # Resent (the acknowledgement was lost): nothing is applied twice.
    again = await store.apply_events(runner.id, batch)
    assert again == (6, [])
    assert await store_database.log_messages(runner.id) == ["second line", "third line"]
    # A later terminal event does not replace the first one.
    late = await store.apply_events(runner.id, [_job_event(7, "job-001", "failed", final=True)])
    assert late == (7, [])
    job = await store.get_job("job-001")
    assert job is not None and job.status == "completed" and job.delivered
    assert job.started_at == 1001.0 and job.completed_at == 1006.0
    assert [(s.name, s.status, s.exit_code) for s in job.steps] == [("s", "completed", 0)]
    assert [(a.attempt, a.status) for a in job.attempts] == [(1, "failed")]  # the attempt's own record
    statistics = await store.statistics(runner.id)
    assert (statistics.total_jobs_executed, statistics.successful_jobs, statistics.average_execution_time) == (
        1,
        1,
        5.0,
    )
    assert await store.apply_events("runner-999", batch) is None


async def test_an_attempt_that_ends_with_retries_to_come_leaves_the_job_running(store_database: StoreDatabase) -> None:
    store = await store_database.open()
    runner = await _with_runner(store)
    await store.insert_job(_job(1))
    await store.apply_events(
        runner.id,
        [
            _job_event(1, "job-001", "running", attempt=1),
            _job_event(2, "job-001", "failed", attempt=1, final=False),
            _job_event(3, "job-001", "running", attempt=2),
        ],
    )
    job = await store.get_job("job-001")
    assert job is not None and (job.status, job.attempt) == ("running", 2)
    assert [(a.attempt, a.status) for a in job.attempts] == [(1, "failed"), (2, "running")]
    # Cancelled by the coordinator meanwhile: the agent's later outcome does not overwrite it.
    await store.cancel_open_jobs(runner.id, "stopped", time.time())
    assert await store.apply_events(runner.id, [_job_event(4, "job-001", "completed", attempt=2, final=True)]) == (
        4,
        [],
    )
    job = await store.get_job("job-001")
    assert job is not None and job.status == "cancelled"


async def test_two_stores_applying_the_same_batches_at_once_apply_each_event_once(
    store_database: StoreDatabase,
) -> None:
    """Two coordinators on one database receiving the same resent batches (an agent failing over)."""
    first, second = await store_database.open(), await store_database.open()
    runner = await _with_runner(first)
    for n in range(1, 6):
        await first.insert_job(_job(n))
    batches: list[list[AgentEvent]] = []
    seq = 0
    for n in range(1, 6):
        batch: list[AgentEvent] = []
        for status, final in (("running", False), ("completed", True)):
            seq += 1
            batch.append(_job_event(seq, f"job-{n:03d}", status, final=final))
        for line in range(3):
            seq += 1
            batch.append(_log(seq, f"job-{n:03d}", f"line {line}"))
        batches.append(batch)

    async def deliver(store: Store) -> list[str]:
        changed: list[str] = []
        for batch in batches:
            applied = await store.apply_events(runner.id, batch)
            assert applied is not None
            changed.extend(f"{c.id}:{c.new_status}" for c in applied[1])
        return changed

    results = await asyncio.gather(deliver(first), deliver(second), deliver(first))
    every_change = sorted(change for result in results for change in result)
    assert every_change == sorted(f"job-{n:03d}:{s}" for n in range(1, 6) for s in ("running", "completed"))
    expected = [f"line {line}" for _ in range(5) for line in range(3)]
    assert await store_database.log_messages(runner.id) == expected
    assert await store_database.scalar("SELECT event_seq FROM runners WHERE id = ?", runner.id) == seq


async def test_concurrent_cancels_of_one_held_job_report_one_cancellation(store_database: StoreDatabase) -> None:
    first, second = await store_database.open(), await store_database.open()
    await _with_runner(first)
    await first.insert_job(_job(1))
    results = await asyncio.gather(
        first.cancel_held_job("job-001", "one", time.time()),
        second.cancel_held_job("job-001", "two", time.time()),
        second.cancel_held_job("job-001", "three", time.time()),
    )
    assert len([r for r in results if r is not None]) == 1


@pytest.mark.postgresql_only  # one SQLite file serves one coordinator, which keeps its records in memory
async def test_a_status_changing_heartbeat_is_written_at_once_and_seen_by_other_stores(
    store_database: StoreDatabase,
) -> None:
    first, second = await store_database.open(), await store_database.open()
    runner = await _with_runner(first)
    change = await first.record_heartbeat(runner.id, CurrentLoad(active_jobs=1), "error", 10.0, time.time())
    assert change is not None and (change.old_status, change.new_status) == ("active", "error")
    seen = await second.get_runner(runner.id)
    assert seen is not None and seen.status == "error" and seen.load.active_jobs == 1
    # One that keeps the status waits for the flush; then the other store sees it too.
    later = time.time() + 5
    await first.record_heartbeat(runner.id, CurrentLoad(active_jobs=3), "error", 10.0, later)
    assert (await first.get_runner(runner.id)).load.active_jobs == 3  # type: ignore[union-attr]
    assert await first.flush_heartbeats() == 1
    seen = await second.get_runner(runner.id)
    assert seen is not None and seen.load.active_jobs == 3 and seen.last_heartbeat == later


@pytest.mark.postgresql_only  # SQLite's store serves reads from the records it keeps in memory
async def test_a_heartbeat_being_written_stays_visible_until_the_write_commits(
    store_database: StoreDatabase,
) -> None:
    import asyncpg

    store = await store_database.open()
    runner = await _with_runner(store)
    beat_at = time.time() + 5
    await store.record_heartbeat(runner.id, CurrentLoad(active_jobs=4), "active", 10.0, beat_at)
    # Another transaction holds the runner's row, so the flush waits in the middle of its write.
    blocker = await asyncpg.connect(store_database.location)
    try:
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("SELECT 1 FROM runners WHERE id = $1 FOR UPDATE", runner.id)
        flush = asyncio.create_task(store.flush_heartbeats())
        await wait_for(lambda: _waiting_on_a_lock(store_database.location), what="the flush to wait for the row lock")
        during = await store.get_runner(runner.id)
        assert during is not None and during.last_heartbeat == beat_at and during.load.active_jobs == 4
        await holding.rollback()
        assert await flush == 1
    finally:
        await blocker.close()
    after = await store.get_runner(runner.id)
    assert after is not None and after.last_heartbeat == beat_at
    assert await store_database.scalar("SELECT last_heartbeat FROM runners WHERE id = ?", runner.id) == beat_at


async def _waiting_on_a_lock(url: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        waiting = await conn.fetchval(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return bool(waiting)
    finally:
        await conn.close()
