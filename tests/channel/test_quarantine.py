"""One event the coordinator refuses never stalls a runner: it is found, put aside, counted, and the rest flows."""

from __future__ import annotations

import json
import sqlite3

from tests.conftest import CoordinatorHandle, StartAgent
from tests.helpers import TERMINAL, Api, submit_job, wait_for
from tests.log_support import stored_entries

GOOD = 40
BAD_AT = 23


def entry(message: str, at: str = "2026-01-01T00:00:00Z") -> str:
    return json.dumps({"kind": "log", "at": at, "level": "info", "message": message, "stream": "system"})


async def test_a_refused_entry_is_quarantined_and_the_rest_flows(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    # A run of entries with one the coordinator refuses (its time is not a time) in the middle, written in one
    # transaction so the shipper first sends them as one batch.
    bodies = [entry(f"good {i}") for i in range(GOOD)]
    bodies.insert(BAD_AT, entry("bad", at="not a time"))

    def spool(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT INTO outbox (runner_id, body) VALUES (?, ?)", [(runner_id, b) for b in bodies])

    await agent.store.db.run(spool)
    agent.outbox.pending.set()

    async def stored() -> list[str]:
        entries = await stored_entries(coordinator, runner_id=runner_id)
        return [e.message for e in entries if e.message.startswith("good ")]

    async def all_good_stored() -> list[str]:
        found = await stored()
        return found if len(found) == GOOD else []

    assert await wait_for(all_good_stored, 20, what="the good entries") == [f"good {i}" for i in range(GOOD)]
    kept = await agent.store.db.read(lambda c: c.execute("SELECT body, code FROM quarantine").fetchall())
    assert [(json.loads(body)["message"], code) for body, code in kept] == [("bad", "INVALID_REQUEST")]
    assert agent.shipper.quarantined == 1
    # And the runner keeps working: a job after it is reported as usual.
    job_id = await submit_job(coordinator.api, runner_id, "after", "echo after")
    assert (await coordinator.api.wait_job(runner_id, job_id, TERMINAL))["status"] == "completed"
    # Counted where an operator sees it.
    scrape = Api(f"http://127.0.0.1:{agent.port}", None)
    try:
        status, text = await scrape.get("/metrics")
    finally:
        await scrape.close()
    assert status == 200 and "rustci_agent_events_quarantined_total 1.0" in text
