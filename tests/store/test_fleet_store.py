"""The fleet-job store on both engines: the held pool, assignment, release, cancellation and the job list; masked
values sealed at rest; and a held job assigned once when two coordinators assign at the same time."""

from __future__ import annotations

import asyncio
import time

from cryptography.fernet import Fernet

from coordinator.sealing import Sealer
from coordinator.store.fleet_records import FleetJob, JobQuery
from shared import ids
from tests.store import engines
from tests.store.engines import Engine, spec

engine = engines.engine


def routed(tags: list[str], created_at: float, name: str = "routed", type: str | None = None) -> FleetJob:
    return FleetJob(id=ids.new_job_id(), spec=spec(name), tags=tags, type=type, created_at=created_at)


async def test_held_jobs_are_listed_oldest_first_and_counted_by_tag_set(engine: Engine) -> None:
    fleet = engine.fleet()
    now = time.time()
    jobs = [routed(["linux", "gpu", "linux"], now), routed(["linux"], now + 1), routed([], now + 2, type="docker")]
    for job in jobs:
        await fleet.insert(job)
    stored = await fleet.get(jobs[0].id)
    assert stored is not None
    assert (stored.tags, stored.tag_set, stored.status) == (["gpu", "linux"], "gpu,linux", "queued")
    assert stored.runner_id is None
    assert stored.spec == jobs[0].spec and stored.created_at == now and stored.seq > 0
    assert await fleet.get("no-such-job") is None
    held = await fleet.held(10)
    assert [j.id for j in held] == [j.id for j in jobs]
    assert [j.id for j in await fleet.held(1, after=held[0].seq)] == [jobs[1].id]
    assert held[2].type == "docker"
    assert await fleet.held_by_tag_set() == {"gpu,linux": 1, "linux": 1, "": 1}


async def test_assign_writes_the_job_row_and_reports_the_runners_queue(engine: Engine) -> None:
    fleet = engine.fleet()
    now = time.time()
    runner_id = await engine.add_runner(now)
    await engine.add_job(runner_id, "queued", now - 5)
    await engine.add_job(runner_id, "running", now - 9, started_at=now - 8)
    await engine.add_job(runner_id, "completed", now - 20, now - 19, now - 18)
    job = routed(["linux"], now)
    await fleet.insert(job)

    taken = await fleet.assign(job, runner_id, now + 1)
    assert taken is not None
    record, queue = taken
    assert (record.id, record.runner_id, record.status, record.spec) == (job.id, runner_id, "queued", job.spec)
    assert queue.queued_ahead == 1 and queue.running_started == [now - 8]
    assert await fleet.assign(job, runner_id, now + 2) is None  # no longer held
    stored = await fleet.get(job.id)
    assert stored is not None and (stored.runner_id, stored.assigned_at) == (runner_id, now + 1)
    assert await engine.value("SELECT status FROM jobs WHERE id = ?", job.id) == "queued"
    assert await fleet.open_counts() == {runner_id: 3}
    assert await fleet.held(10) == [] and await fleet.held_by_tag_set() == {}


async def test_release_puts_back_only_what_no_agent_took_and_forget_runner_keeps_those_it_ran(engine: Engine) -> None:
    fleet = engine.fleet()
    now = time.time()
    runner_id = await engine.add_runner(now)
    jobs = [routed(["a"], now + i) for i in range(3)]
    for job in jobs:
        await fleet.insert(job)
        assert await fleet.assign(job, runner_id, now + 10) is not None
    await engine.execute("UPDATE jobs SET delivered = 1 WHERE id = ?", jobs[1].id)
    await engine.execute("UPDATE jobs SET status = 'running' WHERE id = ?", jobs[2].id)

    assert await fleet.release(runner_id) == [jobs[0].id]
    assert await engine.value("SELECT COUNT(*) FROM jobs WHERE id = ?", jobs[0].id) == 0
    back = await fleet.get(jobs[0].id)
    assert back is not None and (back.runner_id, back.assigned_at, back.status) == (None, None, "queued")
    assert [j.id for j in await fleet.held(10)] == [jobs[0].id]
    assert await fleet.release(runner_id) == []

    # The runner is deleted: its routed jobs without a job row go with it; held ones stay.
    await engine.execute("DELETE FROM jobs WHERE id = ?", jobs[2].id)
    assert await fleet.forget_runner(runner_id) == 1
    assert await fleet.get(jobs[2].id) is None
    assert await fleet.get(jobs[1].id) is not None and await fleet.get(jobs[0].id) is not None


async def test_a_cancelled_held_job_is_never_assigned(engine: Engine) -> None:
    fleet = engine.fleet()
    now = time.time()
    runner_id = await engine.add_runner(now)
    job = routed(["a"], now)
    await fleet.insert(job)
    change = await fleet.cancel_held(job.id, "cancelled by user", now + 1)
    assert change is not None and (change.kind, change.id, change.old_status, change.new_status) == (
        "job",
        job.id,
        "queued",
        "cancelled",
    )
    assert await fleet.cancel_held(job.id, "again", now + 2) is None
    assert await fleet.assign(job, runner_id, now + 3) is None
    stored = await fleet.get(job.id)
    assert stored is not None and (stored.status, stored.reason, stored.completed_at) == (
        "cancelled",
        "cancelled by user",
        now + 1,
    )
    assigned = routed(["a"], now)
    await fleet.insert(assigned)
    await fleet.assign(assigned, runner_id, now)
    assert await fleet.cancel_held(assigned.id, "too late", now) is None


async def test_the_job_list_filters_by_status_runner_and_tags_and_pages_newest_first(engine: Engine) -> None:
    fleet = engine.fleet()
    now = time.time()
    runner_id = await engine.add_runner(now)
    direct = await engine.add_job(runner_id, "completed", now - 100, now - 99, now - 98)
    gpu = routed(["gpu", "linux"], now - 50)
    linux = routed(["linux"], now - 40)
    held = routed(["gpu"], now - 30)
    cancelled = routed(["linux"], now - 20)
    for job in (gpu, linux, held, cancelled):
        await fleet.insert(job)
    await fleet.assign(gpu, runner_id, now)
    await fleet.assign(linux, runner_id, now)
    await fleet.cancel_held(cancelled.id, "no", now)

    everything, total = await fleet.list(JobQuery(), 10, 0)
    assert total == 5
    assert [j.id for j in everything] == [cancelled.id, held.id, linux.id, gpu.id, direct]
    assert everything[1].runner_id is None and everything[1].tags == ["gpu"]
    assert everything[4].tags == [] and everything[4].exit_code is None
    page, total = await fleet.list(JobQuery(), 2, 1)
    assert [j.id for j in page] == [held.id, linux.id] and total == 5
    by_tags, total = await fleet.list(JobQuery(tags=["linux", "gpu", "linux"]), 10, 0)
    assert [j.id for j in by_tags] == [gpu.id] and total == 1
    linux_jobs, _ = await fleet.list(JobQuery(tags=["linux"]), 10, 0)
    assert [j.id for j in linux_jobs] == [cancelled.id, linux.id, gpu.id]
    queued_here, total = await fleet.list(JobQuery(status="queued", runner_id=runner_id), 10, 0)
    assert [j.id for j in queued_here] == [linux.id, gpu.id] and total == 2
    cancelled_jobs, _ = await fleet.list(JobQuery(status="cancelled"), 10, 0)
    assert [j.id for j in cancelled_jobs] == [cancelled.id]
    nothing, total = await fleet.list(JobQuery(tags=["arm"]), 10, 0)
    assert nothing == [] and total == 0


async def test_masked_values_are_sealed_in_both_tables(engine: Engine) -> None:
    sealer = Sealer(Fernet.generate_key())
    fleet = engine.fleet(sealer)
    now = time.time()
    runner_id = await engine.add_runner(now)
    job = FleetJob(
        id=ids.new_job_id(),
        spec=spec("secretive", environment={"TOKEN": "hunter2-value"}, masked=["TOKEN"]),
        tags=["a"],
        type=None,
        created_at=now,
    )
    await fleet.insert(job)
    stored = await fleet.get(job.id)
    assert stored is not None and stored.spec.environment["TOKEN"] == "hunter2-value"
    assert await fleet.assign(job, runner_id, now) is not None
    for table in ("fleet_jobs", "jobs"):
        text = await engine.value(f"SELECT spec FROM {table} WHERE id = ?", job.id)
        assert "hunter2-value" not in text and "sealed:v1:" in text, table


async def test_two_coordinators_assigning_the_same_held_jobs_assign_each_once(engine: Engine) -> None:
    """Two stores on their own connections to one database race to assign every held job to their own runner:
    each job ends with exactly one job row, under the runner whose assignment won."""
    now = time.time()
    runners = [await engine.add_runner(now), await engine.add_runner(now)]
    jobs = [routed(["a"], now + i / 1000) for i in range(60)]
    first = engine.fleet()
    for job in jobs:
        await first.insert(job)
    async with engine.another() as other:
        second = other.fleet()

        async def assign_all(store: engines.AnyFleetStore, runner_id: str) -> list[str]:
            won = []
            for job in jobs:
                taken = await store.assign(job, runner_id, time.time())
                if taken is not None:
                    won.append(job.id)
            return won

        won = await asyncio.gather(assign_all(first, runners[0]), assign_all(second, runners[1]))
    assert sorted(won[0] + won[1]) == sorted(j.id for j in jobs)
    assert not set(won[0]) & set(won[1])
    rows = await engine.rows("SELECT id, runner_id FROM jobs")
    assert len(rows) == len(jobs)
    owner = dict(rows)
    for runner_id, ids_won in zip(runners, won, strict=True):
        assert all(owner[job_id] == runner_id for job_id in ids_won)
        fleet_rows = await engine.rows("SELECT id FROM fleet_jobs WHERE runner_id = ?", runner_id)
        assert sorted(r[0] for r in fleet_rows) == sorted(ids_won)
