"""Jobs submitted to the fleet (``POST /api/jobs``), routed by tags to real agents on a live coordinator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.daemon import Agent
from coordinator import routing
from tests.conftest import API_KEY, CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, Api, SilentChannel, assert_error, register_runner, wait_for


def _job(name: str = "routed", run: str = "true", **extra: Any) -> dict[str, Any]:
    return {"name": name, "steps": [{"name": "s", "run": run}], **extra}


def _blocking(gate: Path) -> str:
    """A step that runs until ``gate`` exists."""
    return f'while [ ! -e "{gate}" ]; do sleep 0.02; done'


async def _agent(start_agent: StartAgent, name: str, tags: list[str], slots: int) -> str:
    agent: Agent = await start_agent(state_name=name, runner={"name": name, "tags": tags}, max_concurrent_jobs=slots)
    return agent.identity().runner_id


async def _submit(api: Api, tags: list[str], **job: Any) -> dict[str, Any]:
    status, body = await api.post("/jobs", {**_job(**job), "tags": tags})
    assert status == 201, body
    assert body["status"] == "queued" and body["success"] is True
    return dict(body)


async def _fleet_job(api: Api, job_id: str) -> dict[str, Any]:
    status, body = await api.get(f"/jobs/{job_id}")
    assert status == 200, body
    return dict(body)


async def _wait_fleet_job(api: Api, job_id: str, timeout: float = 20.0, **expected: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        job = await _fleet_job(api, job_id)
        return job if all(job.get(k) == v for k, v in expected.items()) else None

    return await wait_for(probe, timeout, what=f"job {job_id} to have {expected}")


async def _busy(api: Api, runner_id: str, gate: Path, count: int) -> list[str]:
    """Submit ``count`` jobs straight to ``runner_id`` that run until ``gate`` exists."""
    ids = []
    for i in range(count):
        status, body = await api.post(f"/runners/{runner_id}/jobs", _job(f"busy-{i}", _blocking(gate)))
        assert status == 201, body
        ids.append(body["job_id"])
    return ids


async def test_a_job_goes_to_the_qualifying_runner_with_most_free_slots_ties_to_the_least_recently_busy(
    coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> None:
    api = coordinator.api
    gate = tmp_path / "gate"
    big = await _agent(start_agent, "big", ["build", "linux"], 3)
    small = await _agent(start_agent, "small", ["build", "linux"], 2)
    other = await _agent(start_agent, "other", ["deploy"], 10)
    await _busy(api, big, gate, 2)  # big: 1 free; small: 2 free; other: 10 free but without the tags

    first = await _submit(api, ["build", "linux"], name="first", run=_blocking(gate))
    assert first["runner_id"] == small  # most free slots among the qualifying (2 > 1)
    assert first["tags"] == ["build", "linux"] and first["estimated_start_time"]  # a free slot: about now
    second = await _submit(api, ["linux"], name="second", run=_blocking(gate))
    assert second["runner_id"] == big  # 1 free each: big was assigned none in the last minute, small one
    third = await _submit(api, ["build"], name="third")
    assert third["runner_id"] == small
    assert other not in {first["runner_id"], second["runner_id"], third["runner_id"]}

    # Visible under its runner once assigned, and by id with its runner.
    status, listing = await api.get(f"/runners/{small}/jobs")
    assert status == 200 and first["job_id"] in {j["job_id"] for j in listing["jobs"]}
    detail = await _fleet_job(api, first["job_id"])
    assert detail["runner_id"] == small and detail["tags"] == ["build", "linux"] and detail["assigned_at"]
    gate.touch()
    for job in (first, second, third):
        done = await _wait_fleet_job(api, job["job_id"], status="completed")
        assert done["runner_id"] == job["runner_id"]
        assert (await api.job(job["runner_id"], job["job_id"]))["status"] == "completed"


async def test_held_jobs_are_assigned_when_a_runner_gains_the_tag_registers_or_frees_a_slot(
    coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> None:
    api = coordinator.api
    gate = tmp_path / "gate"
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{coordinator.api_url}/runners/ws?events=job_assigned", headers={"X-API-Key": API_KEY}
        )
        plain = await _agent(start_agent, "plain", ["linux"], 1)

        # 1. A runner gains the tag (PUT /runners/{id}).
        held = await _submit(api, ["gpu"], name="wants-gpu")
        assert held["runner_id"] is None
        view = await _fleet_job(api, held["job_id"])
        assert view["runner_id"] is None and view["status"] == "queued" and view["steps"][0]["status"] == "pending"
        assert 'rustci_jobs_waiting_for_runner{tags="gpu"} 1.0' in await _metrics(session, coordinator)
        status, _ = await api.put(f"/runners/{plain}", {"tags": ["linux", "gpu"]})
        assert status == 200
        done = await _wait_fleet_job(api, held["job_id"], status="completed")
        assert done["runner_id"] == plain
        event = await ws.receive_json(timeout=10)
        assert event["type"] == "job_assigned" and event["job_id"] == held["job_id"] and event["runner_id"] == plain
        assert event["tags"] == ["gpu"]
        exposition = await _metrics(session, coordinator)
        assert 'rustci_jobs_waiting_for_runner{tags="gpu"}' not in exposition
        assert "rustci_job_assignment_seconds_count 1.0" in exposition

        # 2. A runner with the tag registers (and connects).
        held = await _submit(api, ["arm64"], name="wants-arm")
        assert held["runner_id"] is None
        arm = await _agent(start_agent, "arm", ["arm64"], 1)
        done = await _wait_fleet_job(api, held["job_id"], status="completed")
        assert done["runner_id"] == arm

        # 3. The only qualifying runner frees a slot.
        busy = await _busy(api, arm, gate, 1)
        held = await _submit(api, ["arm64"], name="waits-for-slot")
        assert held["runner_id"] is None
        assert (await _fleet_job(api, held["job_id"]))["runner_id"] is None
        gate.touch()
        await api.wait_job(arm, busy[0], {"completed"})
        done = await _wait_fleet_job(api, held["job_id"], status="completed")
        assert done["runner_id"] == arm
        await ws.close()


async def _metrics(session: aiohttp.ClientSession, coordinator: CoordinatorHandle) -> str:
    async with session.get(f"{coordinator.url}/metrics") as response:
        return await response.text()


@pytest.mark.parametrize("away", ["inactive", "stopped"])
async def test_an_assigned_but_undelivered_job_is_rerouted_when_its_runner_goes_away(
    coordinator: CoordinatorHandle, start_agent: StartAgent, away: str
) -> None:
    api = coordinator.api
    steady = await _agent(start_agent, "steady", ["reroute"], 1)
    # A runner whose agent connects and then takes no job (never answers): it has the most free slots.
    silent = await register_runner(
        api, type="native", tags=["reroute"], metadata={"max_concurrent_jobs": 10, "heartbeat_interval": 1.0}
    )
    silent_id = silent["runner_id"]
    async with SilentChannel(coordinator.url, silent_id, silent["registration_token"]) as channel:
        status, _ = await api.put(f"/runners/{silent_id}", {"tags": ["reroute"]})  # its hello announced none
        assert status == 200
        job = await _submit(api, ["reroute"], name="bounced")
        assert job["runner_id"] == silent_id

        async def offered() -> bool:
            return any(f["kind"] == "job" and f["body"]["job_id"] == job["job_id"] for f in channel.frames)

        await wait_for(offered, 5, what="the job to be offered to the silent agent")
        if away == "stopped":  # its agent says it stopped, before it accepted the job
            assert channel.ws is not None
            beat = {"load": {}, "state": "stopped", "heartbeat_interval": 10}
            await channel.ws.send_str(json.dumps({"id": 99, "kind": "heartbeat", "body": beat}))
            await api.wait_runner_status(silent_id, "stopped", timeout=10)
            done = await _wait_fleet_job(api, job["job_id"], status="completed")
            # Its acceptance arrives only now, after the job moved: the coordinator takes it back from it.
            [offer] = [f for f in channel.frames if f["kind"] == "job"]
            accepted = {"accepted": True, "job_id": job["job_id"], "status": "queued"}
            await channel.ws.send_str(json.dumps({"id": offer["id"], "kind": "reply", "body": accepted}))

            async def cancelled() -> bool:
                return any(f["kind"] == "cancel" and f["body"]["job_id"] == job["job_id"] for f in channel.frames)

            await wait_for(cancelled, 5, what="the late taker to be told to cancel the job")
            assert (await _fleet_job(api, job["job_id"]))["status"] == "completed"  # still its one ending
    if away == "inactive":  # its channel closed before it accepted the job; then it turns inactive
        await api.wait_runner_status(silent_id, "inactive", timeout=10)
        done = await _wait_fleet_job(api, job["job_id"], status="completed")
    assert done["runner_id"] == steady
    status, listing = await api.get(f"/runners/{silent_id}/jobs")
    assert status == 200 and listing["jobs"] == []
    status, listing = await api.get(f"/jobs?runner_id={steady}")
    assert [j["job_id"] for j in listing["jobs"]] == [job["job_id"]]


async def test_a_job_an_agent_accepted_stays_with_it_when_the_runner_is_stopped(
    coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> None:
    api = coordinator.api
    gate = tmp_path / "gate"
    first = await _agent(start_agent, "first", ["stay"], 2)
    job = await _submit(api, ["stay"], name="accepted", run=_blocking(gate))
    assert job["runner_id"] == first
    await api.wait_job(first, job["job_id"], {"running"})
    second = await _agent(start_agent, "second", ["stay"], 2)
    status, body = await api.post(f"/runners/{first}/stop", {"graceful": True, "timeout": 30})
    assert status == 200, body
    await api.wait_runner_status(first, "stopped")
    gate.touch()  # the stopped runner finishes what it accepted
    final = await _wait_fleet_job(api, job["job_id"], status="completed")
    assert final["runner_id"] == first and len(final["attempts"]) <= 1  # ended where it was accepted, once
    assert (await api.get(f"/runners/{second}/jobs"))[1]["jobs"] == []


async def test_cancelling_a_held_job_keeps_it_from_ever_being_assigned(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    api = coordinator.api
    held = await _submit(api, ["nobody-yet"], name="to-cancel")
    assert held["runner_id"] is None
    status, body = await api.post(f"/jobs/{held['job_id']}/cancel")
    assert status == 200 and body["status"] == "cancelled", body
    status, body = await api.post(f"/jobs/{held['job_id']}/cancel")
    assert status == 200 and body["message"] == "Job was already cancelled"
    later = await _submit(api, ["nobody-yet"], name="after")
    runner = await _agent(start_agent, "late", ["nobody-yet"], 1)
    await _wait_fleet_job(api, later["job_id"], status="completed", runner_id=runner)
    view = await _fleet_job(api, held["job_id"])
    assert view["status"] == "cancelled" and view["runner_id"] is None
    status, body = await api.post("/jobs/job-does-not-exist/cancel")
    assert_error(status, body, 404, "JOB_NOT_FOUND")
    status, body = await api.get("/jobs/job-does-not-exist")
    assert_error(status, body, 404, "JOB_NOT_FOUND")


async def test_cancel_by_id_reaches_a_runner_addressed_job_on_its_agent(
    coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> None:
    api = coordinator.api
    runner = await _agent(start_agent, "direct", ["x"], 1)
    [job_id] = await _busy(api, runner, tmp_path / "never", 1)
    await api.wait_job(runner, job_id, {"running"})
    status, body = await api.post(f"/jobs/{job_id}/cancel")
    assert status == 200, body
    final = await api.wait_job(runner, job_id, TERMINAL)
    assert final["status"] == "cancelled"
    assert (await _fleet_job(api, job_id))["runner_id"] == runner


async def test_listing_jobs_filters_by_status_runner_and_tags_and_pages(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    api = coordinator.api
    runner = await _agent(start_agent, "lister", ["a", "b"], 4)
    direct = []
    for i in range(3):
        status, body = await api.post(f"/runners/{runner}/jobs", _job(f"direct-{i}"))
        assert status == 201
        direct.append(body["job_id"])
    routed = [(await _submit(api, ["a"], name=f"routed-{i}"))["job_id"] for i in range(2)]
    routed.append((await _submit(api, ["a", "b"], name="routed-ab"))["job_id"])
    held = [(await _submit(api, ["a", "zzz"], name=f"held-{i}"))["job_id"] for i in range(2)]
    for job_id in direct + routed:
        await _wait_fleet_job(api, job_id, status="completed")

    status, body = await api.get("/jobs")
    assert status == 200 and body["total_count"] == 8 and body["has_more"] is False
    assert {j["job_id"] for j in body["jobs"]} == set(direct + routed + held)
    first = body["jobs"][0]
    assert set(first) >= {"job_id", "name", "status", "runner_id", "created_at", "started_at", "completed_at"}
    assert first["job_id"] == held[-1]  # newest first

    status, body = await api.get("/jobs?status=queued")
    assert {j["job_id"] for j in body["jobs"]} == set(held) and all(j["runner_id"] is None for j in body["jobs"])
    status, body = await api.get(f"/jobs?runner_id={runner}&status=completed")
    assert body["total_count"] == 6
    status, body = await api.get("/jobs?tags=a")
    assert {j["job_id"] for j in body["jobs"]} == set(routed + held)
    status, body = await api.get("/jobs?tags=b,a")
    assert [j["job_id"] for j in body["jobs"]] == [routed[-1]]

    pages: list[str] = []
    for offset in range(0, 8, 3):
        status, body = await api.get(f"/jobs?limit=3&offset={offset}")
        assert status == 200 and body["total_count"] == 8
        assert body["has_more"] is (offset + 3 < 8)
        pages += [j["job_id"] for j in body["jobs"]]
    assert len(pages) == 8 and set(pages) == set(direct + routed + held)

    status, body = await api.get("/jobs?status=bogus")
    assert_error(status, body, 400, "INVALID_REQUEST")
    status, body = await api.get("/jobs?limit=0")
    assert_error(status, body, 400, "INVALID_REQUEST")
    status, body = await api.post("/jobs", {**_job(), "tags": ["bad tag!"]})
    assert_error(status, body, 400, "INVALID_REQUEST")
    status, body = await api.post("/jobs", {**_job(), "tags": ["a"], "type": "mainframe"})
    assert_error(status, body, 400, "INVALID_REQUEST")
    status, body = await api.post("/jobs", {**_job(), "tags": "a"})
    assert_error(status, body, 400, "INVALID_REQUEST")


async def test_a_routed_job_may_name_the_runner_type(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    api = coordinator.api
    native = await _agent(start_agent, "native", ["t"], 1)
    job = await _submit(api, ["t"], type="docker")
    assert job["runner_id"] is None  # the only runner with the tag is native
    job2 = await _submit(api, ["t"], type="native")
    assert job2["runner_id"] == native
    await _wait_fleet_job(api, job2["job_id"], status="completed")
    _, body = await api.get("/jobs?status=queued")
    assert [j["job_id"] for j in body["jobs"]] == [job["job_id"]] and body["jobs"][0]["type"] == "docker"


async def test_500_routed_jobs_over_4_agents_each_end_once_spread_by_free_slots(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    api = coordinator.api
    slots = {await _agent(start_agent, f"load-{n}", ["load"], n): n for n in (1, 2, 3, 4)}
    await _agent(start_agent, "elsewhere", ["other"], 4)  # never qualifies
    submitted: list[str] = []
    for i in range(500):
        submitted.append((await _submit(api, ["load"], name=f"load-{i}", run="sleep 0.02"))["job_id"])
    assert len(set(submitted)) == 500

    async def all_done() -> dict[str, Any] | None:
        _, body = await api.get("/jobs?tags=load&limit=1000")
        return body if all(j["status"] in TERMINAL for j in body["jobs"]) else None

    body = await wait_for(all_done, 180, interval=0.5, what="all 500 routed jobs to end")
    assert body["total_count"] == 500 and sorted(j["job_id"] for j in body["jobs"]) == sorted(submitted)
    assert {j["status"] for j in body["jobs"]} == {"completed"}
    per_runner = {runner_id: 0 for runner_id in slots}
    for job in body["jobs"]:
        per_runner[job["runner_id"]] += 1  # only runners with the tag
    # Each job once: its runner lists it, with one attempt, and no other runner does.
    for runner_id, count in per_runner.items():
        _, listing = await api.get(f"/runners/{runner_id}/jobs?limit=1000")
        assert listing["total_count"] == count
    assert sum(per_runner.values()) == 500
    by_slots = sorted(per_runner.items(), key=lambda item: slots[item[0]])
    counts = [count for _, count in by_slots]
    print("routed jobs by runner slots (1, 2, 3, 4):", counts)
    # The runner with the most free slots wins each choice, so a one-slot runner takes a job only when it is
    # the sole one with a free slot: the larger the runner, the larger its share.
    assert all(count > 0 for count in counts[1:]), counts
    assert counts[-1] > counts[0], counts  # four slots took more than one slot
    assert sum(counts[2:]) > sum(counts[:2]), counts  # 3 + 4 slots took more than 1 + 2


async def test_held_jobs_survive_a_coordinator_restart_and_are_assigned_after_it(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    api = coordinator.api
    held = await _submit(api, ["after-restart"], name="kept")
    assert held["runner_id"] is None
    await coordinator.restart()
    view = await _fleet_job(api, held["job_id"])
    assert view["status"] == "queued" and view["runner_id"] is None
    async with aiohttp.ClientSession() as session:
        assert 'rustci_jobs_waiting_for_runner{tags="after-restart"} 1.0' in await _metrics(session, coordinator)
    runner = await _agent(start_agent, "after", ["after-restart"], 1)
    await _wait_fleet_job(api, held["job_id"], status="completed", runner_id=runner)


async def test_deleting_a_runner_takes_its_routed_jobs_with_it_and_leaves_held_ones(
    coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> None:
    api = coordinator.api
    runner = await _agent(start_agent, "doomed", ["gone"], 1)
    assigned = await _submit(api, ["gone"], name="on-doomed", run=_blocking(tmp_path / "never"))
    assert assigned["runner_id"] == runner
    held = await _submit(api, ["gone"], name="waiting")
    assert held["runner_id"] is None
    status, body = await api.delete(f"/runners/{runner}?force=true")
    assert status == 200, body
    status, body = await api.get(f"/jobs/{assigned['job_id']}")
    assert_error(status, body, 404, "JOB_NOT_FOUND")
    _, listing = await api.get("/jobs")
    assert [j["job_id"] for j in listing["jobs"]] == [held["job_id"]]


async def test_held_jobs_no_runner_can_take_do_not_block_later_ones(
    coordinator: CoordinatorHandle, start_agent: StartAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routing, "BATCH", 2)  # the pool is read two jobs at a time
    api = coordinator.api
    stuck = [(await _submit(api, ["nobody"], name=f"stuck-{i}"))["job_id"] for i in range(5)]
    later = await _submit(api, ["someone"], name="later")
    runner = await _agent(start_agent, "someone", ["someone"], 1)
    await _wait_fleet_job(api, later["job_id"], status="completed", runner_id=runner)
    _, body = await api.get("/jobs?status=queued")
    assert sorted(j["job_id"] for j in body["jobs"]) == sorted(stuck)


async def test_concurrent_submissions_never_fill_a_runner_past_its_slots(
    coordinator: CoordinatorHandle, start_agent: StartAgent, tmp_path: Path
) -> None:
    api = coordinator.api
    gate = tmp_path / "gate"
    two = await _agent(start_agent, "two", ["par"], 2)
    three = await _agent(start_agent, "three", ["par"], 3)
    answers = await asyncio.gather(*(_submit(api, ["par"], name=f"par-{i}", run=_blocking(gate)) for i in range(20)))
    placed = [a["runner_id"] for a in answers]
    assert placed.count(two) == 2 and placed.count(three) == 3 and placed.count(None) == 15
    _, body = await api.get("/jobs?tags=par&limit=100")
    held = [j for j in body["jobs"] if j["runner_id"] is None]
    assert len(held) == 15 and {j["status"] for j in held} == {"queued"}
    gate.touch()  # as slots free up, the held ones follow

    async def all_done() -> bool:
        _, body = await api.get("/jobs?tags=par&status=completed&limit=100")
        return bool(body["total_count"] == 20)

    await wait_for(all_done, 60, interval=0.2, what="all 20 jobs to complete")
