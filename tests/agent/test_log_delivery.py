"""Every line a step prints reaches the coordinator exactly once and in order, whatever fails in between.

Real daemons on loopback: the in-process coordinator (restartable), in-process agents or ``python -m agent``
subprocesses (for SIGKILL), and a small TCP relay between agent and coordinator (``tests.relay``) that the tests
stop, start and make lose answers. Checks read what the coordinator stored, by sequence and content.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psutil
import pytest

from agent.shipping import HIGH_WATER
from tests.conftest import CoordinatorHandle, StartAgent, StartAgentProcess
from tests.helpers import TERMINAL, Api, free_port, wait_for
from tests.log_support import stored_entries
from tests.relay import TcpProxy

SEQ_20K = "seq 1 20000"
# The same 20 000 numbered lines, printed over about a second so that failures can land in the middle.
PACED_20K = "i=0; while [ $i -lt 20 ]; do seq $((i*1000+1)) $((i*1000+1000)); sleep 0.05; i=$((i+1)); done"
JOB_SYSTEM_ENTRIES = 4  # Job started, Step started, Step completed, Job completed


def gated(run: str, go: Path) -> str:
    """``run`` once the file ``go`` exists: the job is delivered (over the channel) and running before the test
    cuts the agent off, and its output is made while it is cut off."""
    return f"while [ ! -e {go} ]; do sleep 0.01; done; {run}"


@pytest.fixture
async def proxy(coordinator: CoordinatorHandle) -> AsyncIterator[TcpProxy]:
    relay = TcpProxy(coordinator.port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


# --- helpers -------------------------------------------------------------------------------------------------


async def submit(api: Api, runner_id: str, run: str, **job: Any) -> str:
    body = {"name": "logs", "steps": [{"name": "print", "run": run}], **job}
    status, answer = await api.post(f"/runners/{runner_id}/jobs", body)
    assert status == 201, answer
    return str(answer["job_id"])


async def stored(coordinator: CoordinatorHandle, job_id: str) -> list[tuple[int, str, str, str]]:
    """(seq, stream, level, message) of the job's entries on the coordinator, in sequence order."""
    levels = {10: "debug", 20: "info", 30: "warn", 40: "error"}
    return [(e.seq, e.stream, levels[e.level], e.message) for e in await stored_entries(coordinator, job_id=job_id)]


async def stored_count(coordinator: CoordinatorHandle, job_id: str) -> int:
    return len(await stored_entries(coordinator, job_id=job_id))


def numbers(rows: list[tuple[int, str, str, str]]) -> list[int]:
    return [int(message) for _, stream, _, message in rows if stream == "stdout"]


def system(rows: list[tuple[int, str, str, str]]) -> list[str]:
    return [message for _, stream, _, message in rows if stream == "system"]


async def only_runner(api: Api) -> str:
    async def probe() -> str | None:
        _, body = await api.get("/runners")
        active = [r["id"] for r in body["runners"] if r["status"] == "active"]
        return active[0] if active else None

    return await wait_for(probe, 20, what="the agent's runner to register")


def read_agent_db(path: Path, sql: str, *args: Any) -> list[Any]:
    """Read the agent's own SQLite while it runs (WAL lets a reader in) or after it was killed."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# --- exactly once, in order, across failures -----------------------------------------------------------------


async def test_every_line_arrives_once_in_order_across_a_coordinator_restart(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    job_id = await submit(coordinator.api, runner_id, PACED_20K)
    await wait_for(lambda: _at_least(coordinator, job_id, 3000), 20, what="the first lines to be stored")
    before = await stored_count(coordinator, job_id)
    await coordinator.restart()
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL, timeout=30)
    assert job["status"] == "completed"
    rows = await stored(coordinator, job_id)
    assert before < 20_000  # the restart did land mid-stream
    assert numbers(rows) == list(range(1, 20_001))
    # Order across kinds too: the step's output comes after its start and before its end.
    kinds = [(stream, message.split(":")[0]) for _, stream, _, message in rows if stream == "system"]
    assert kinds == [
        ("system", "Job started"),
        ("system", "Step started"),
        ("system", "Step completed"),
        ("system", "Job completed"),
    ]
    stdout_seqs = [seq for seq, stream, _, _ in rows if stream == "stdout"]
    system_seqs = [seq for seq, stream, _, _ in rows if stream == "system"]
    assert system_seqs[1] < stdout_seqs[0] and stdout_seqs[-1] < system_seqs[2]


async def _at_least(coordinator: CoordinatorHandle, job_id: str, count: int) -> bool:
    return await stored_count(coordinator, job_id) >= count


async def test_lost_answers_and_a_cut_connection_duplicate_and_lose_nothing(
    coordinator: CoordinatorHandle, proxy: TcpProxy, start_agent: StartAgent
) -> None:
    agent = await start_agent(coordinator={"url": proxy.url})
    runner_id = agent.identity().runner_id
    proxy.lose_answers = True  # batches are applied, acknowledgements never arrive: the agent resends
    job_id = await submit(coordinator.api, runner_id, SEQ_20K)

    async def resent() -> bool:
        return agent.shipper.failures >= 2 and await stored_count(coordinator, job_id) > 0

    await wait_for(resent, 20, what="batches applied whose answers were lost")
    await proxy.stop()  # now the connection is cut altogether while the job finishes
    proxy.lose_answers = False

    async def finished_on_agent() -> bool:
        state = await agent.store.job_status(job_id)
        return state is not None and state[0] == "completed"

    await wait_for(finished_on_agent, 20, what="the job to finish on the agent while cut off")
    await proxy.start()
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL, timeout=30)
    assert job["status"] == "completed" and job["steps"][0]["status"] == "completed"
    rows = await stored(coordinator, job_id)
    assert numbers(rows) == list(range(1, 20_001))
    assert len(system(rows)) == JOB_SYSTEM_ENTRIES


async def test_spooled_entries_survive_a_sigkill_of_the_agent(
    coordinator: CoordinatorHandle, proxy: TcpProxy, agent_process: StartAgentProcess, tmp_path: Path
) -> None:
    port = free_port()
    first = agent_process(proxy.url, state_name="killed", port=port)
    runner_id = await only_runner(coordinator.api)
    go = tmp_path / "go"
    job_id = await submit(coordinator.api, runner_id, gated(SEQ_20K, go))
    await coordinator.api.wait_job(runner_id, job_id, {"running"})
    await proxy.stop()
    before_the_cut = await stored_count(coordinator, job_id)  # the job's start, no output yet
    go.touch()
    spool = tmp_path / "killed" / "agent.db"

    async def reported_on_disk() -> bool:
        rows = await asyncio.to_thread(
            read_agent_db,
            spool,
            "SELECT COUNT(*) FROM outbox WHERE json_extract(body, '$.kind') = 'job'"
            " AND json_extract(body, '$.job_id') = ? AND json_extract(body, '$.final')",
            job_id,
        )
        return bool(rows[0][0])

    await wait_for(reported_on_disk, 20, what="the job's outcome in the agent's spool")
    first.kill()  # SIGKILL: nothing gets flushed or shipped on the way out
    assert await stored_count(coordinator, job_id) == before_the_cut
    agent_process(proxy.url, state_name="killed", port=port)
    await proxy.start()
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL, timeout=30)
    assert job["status"] == "completed"
    rows = await stored(coordinator, job_id)
    assert numbers(rows) == list(range(1, 20_001))
    assert len(system(rows)) == JOB_SYSTEM_ENTRIES


async def test_a_sigkill_mid_output_keeps_a_gapless_prefix(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path
) -> None:
    port = free_port()
    first = agent_process(coordinator.url, state_name="midway", port=port)
    runner_id = await only_runner(coordinator.api)
    # The step stops half-way until a file that never appears: it is still running when the agent is killed,
    # however fast the host prints and however slowly it stores.
    never = tmp_path / "never"
    run = f'seq 1 5000; while [ ! -e "{never}" ]; do sleep 0.02; done; seq 5001 20000'
    job_id = await submit(coordinator.api, runner_id, run)
    await wait_for(lambda: _at_least(coordinator, job_id, 3000), 20, what="the first lines to be stored")
    first.kill()
    at_kill = await stored_count(coordinator, job_id)
    agent_process(coordinator.url, state_name="midway", port=port)
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL, timeout=30)
    assert job["status"] == "failed" and job["reason"] == "agent restarted"
    # The job's failure is spooled after everything the killed agent had spooled: all of that is here now.
    printed = numbers(await stored(coordinator, job_id))
    assert len(printed) >= at_kill - 2 and len(printed) < 20_000
    assert printed == list(range(1, len(printed) + 1))  # no gap, no duplicate, in order


async def test_a_full_spool_drops_the_oldest_log_entries_never_the_job_and_says_so(
    coordinator: CoordinatorHandle, proxy: TcpProxy, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent(coordinator={"url": proxy.url}, log_spool_max_bytes=256 * 1024)
    runner_id = agent.identity().runner_id
    go = tmp_path / "go"
    job_id = await submit(coordinator.api, runner_id, gated(SEQ_20K, go))  # ~3.5 MB of entries to spool
    await coordinator.api.wait_job(runner_id, job_id, {"running"})
    await proxy.stop()
    go.touch()

    async def finished_on_agent() -> bool:
        state = await agent.store.job_status(job_id)
        return state is not None and state[0] == "completed"

    # The job never waits for the spool: it finishes while nothing can be delivered.
    await wait_for(finished_on_agent, 20, what="the job to finish while the coordinator is unreachable")
    assert agent.outbox.dropped_entries > 0
    assert await agent.outbox.spool_bytes() <= 256 * 1024
    await proxy.start()
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL, timeout=30)
    assert job["status"] == "completed" and job["steps"][0]["status"] == "completed"  # state events all kept
    rows = await stored(coordinator, job_id)
    printed = numbers(rows)
    assert printed == sorted(set(printed)) and printed[-1] == 20_000  # in order, once, the newest kept

    # One warning per drop, updated in place while it waits to be sent: a handful, not one per lost line.
    found = [(e.level, e.message) for e in await stored_entries(coordinator, runner_id=runner_id, no_job=True)]
    assert 1 <= len(found) <= 5
    assert all(level == 30 and "log spool" in message for level, message in found)
    counts = [re.search(r"Dropped (\d+) log entries", message) for _, message in found]
    dropped = sum(int(match.group(1)) for match in counts if match)
    assert dropped == (20_000 - len(printed)) + (JOB_SYSTEM_ENTRIES - len(system(rows)))


async def test_lines_reach_a_follower_within_20_ms(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    script = "import time\nfor i in range(25):\n    print(repr(time.time()), flush=True)\n    time.sleep(0.04)"
    delays: list[float] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{coordinator.api_url}/runners/{runner_id}/logs?follow=true&level=info",
            headers={"X-API-Key": coordinator.api.api_key or ""},
        ) as response,
    ):
        await submit(coordinator.api, runner_id, f"{sys.executable} -c '{script}'")
        async with asyncio.timeout(20):
            async for raw in response.content:
                if raw.startswith(b"data: "):
                    entry = json.loads(raw[6:])
                    if entry["context"]["stream"] == "stdout":
                        delays.append(time.time() - float(entry["message"]))
                        if len(delays) == 25:
                            break
    assert statistics.median(delays) < 0.020, delays


async def test_a_step_printing_faster_than_the_spool_is_slowed_not_dropped(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    job_id = await submit(coordinator.api, runner_id, "yes \"$(printf '%099d' 0)\" | head -c 10000000")

    async def finished_on_agent() -> bool:
        state = await agent.store.job_status(job_id)
        return state is not None and state[0] in TERMINAL

    await wait_for(finished_on_agent, 30, what="100 000 lines to be spooled")
    # The executor waited for the writer between chunks: memory stayed near the high-water mark, nothing went.
    assert agent.outbox.dropped_entries == 0
    assert agent.outbox.peak_buffered_bytes < HIGH_WATER + 512 * 1024
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL, timeout=60)
    assert job["status"] == "completed"
    assert await stored_count(coordinator, job_id) == 100_000 + JOB_SYSTEM_ENTRIES


# --- what steps print ---------------------------------------------------------------------------------------


async def test_hostile_output_is_stored_sanely(coordinator: CoordinatorHandle, start_agent: StartAgent) -> None:
    agent = await start_agent(max_log_line_bytes=1024)
    runner_id = agent.identity().runner_id
    run = (
        r"printf 'ok \377\376 end\n'; printf '10%%\r50%%\r100%%\n'; head -c 3000 /dev/zero | tr '\0' a; echo;"
        r" echo oops >&2; printf 'no newline at the end'"
    )
    job_id = await submit(coordinator.api, runner_id, run)
    await coordinator.api.wait_job(runner_id, job_id, TERMINAL)
    rows = await stored(coordinator, job_id)
    # Each stream keeps its order; between stdout and stderr there is none to keep (two pipes).
    assert [(level, message) for _, stream, level, message in rows if stream == "stdout"] == [
        ("info", "ok \ufffd\ufffd end"),
        ("info", "100%"),
        ("info", "a" * 1024 + " [continued]"),
        ("info", "a" * 1024 + " [continued]"),
        ("info", "a" * 952),
        ("info", "no newline at the end"),
    ]
    assert [(level, message) for _, stream, level, message in rows if stream == "stderr"] == [("warn", "oops")]


async def test_leading_and_trailing_whitespace_is_kept_exactly(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent()
    runner_id = agent.identity().runner_id
    job_id = await submit(coordinator.api, runner_id, r"printf '   indented\n\tTabbed  \n  key: value \n'")
    await coordinator.api.wait_job(runner_id, job_id, TERMINAL)
    expected = ["   indented", "\tTabbed  ", "  key: value "]
    rows = await stored(coordinator, job_id)
    assert [message for _, stream, _, message in rows if stream == "stdout"] == expected
    status, body = await coordinator.api.get(f"/runners/{runner_id}/logs?job_id={job_id}&limit=100")
    assert status == 200, body
    assert [e["message"] for e in body["logs"] if e["context"]["stream"] == "stdout"] == expected


API_KEY = "k3y/with+special=chars"
RUNNER_TOKEN = "runner-token-4242"


def secret_forms_shown(text: str) -> list[str]:
    """The forms of the test's secrets that must never appear."""
    forms = []
    for value in (API_KEY, RUNNER_TOKEN):
        forms += [value, base64.b64encode(value.encode()).decode()[:16], quote(value, safe="")]
        forms.append(base64.b64encode(b"user:" + value.encode()).decode()[8:20])
    return [form for form in forms if form in text]


async def test_secrets_are_masked_before_they_are_spooled(
    coordinator: CoordinatorHandle, proxy: TcpProxy, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent(coordinator={"url": proxy.url}, secrets={"RUNNER_TOKEN": RUNNER_TOKEN})
    runner_id = agent.identity().runner_id
    go = tmp_path / "go"
    py = sys.executable
    steps = [
        {"name": "gate", "run": gated("true", go)},
        {"name": "plain", "run": 'echo "key=$API_KEY plain=$PLAIN runner=$RUNNER_TOKEN"'},
        {"name": "b64", "run": "printf '%s' \"$API_KEY\" | base64; printf 'user:%s' \"$RUNNER_TOKEN\" | base64"},
        {"name": "url", "run": f'{py} -c \'import os, urllib.parse as u; print(u.quote(os.environ["API_KEY"], ""))\''},
        {
            "name": "pieces",
            "run": f'{py} -c \'import os, sys, time\nv = os.environ["API_KEY"]\nsys.stdout.write("split " + v[:5])\n'
            f'sys.stdout.flush()\ntime.sleep(0.2)\nsys.stdout.write(v[5:] + " end\\n")\'',
        },
    ]
    job = {"environment": {"API_KEY": API_KEY, "PLAIN": "visible-value"}, "masked": ["API_KEY"]}
    status, answer = await coordinator.api.post(f"/runners/{runner_id}/jobs", {"name": "m", "steps": steps, **job})
    assert status == 201, answer
    job_id = answer["job_id"]
    await coordinator.api.wait_job(runner_id, job_id, {"running"})
    await proxy.stop()  # everything from now on stays in the agent's spool, where the test reads it
    go.touch()

    async def finished_on_agent() -> bool:
        state = await agent.store.job_status(job_id)
        return state is not None and state[0] in TERMINAL

    await wait_for(finished_on_agent, 20, what="the job to finish on the agent")
    await agent.outbox.flush()
    spooled = await agent.store.db.read(lambda c: [r[0] for r in c.execute("SELECT body FROM outbox").fetchall()])
    spool_text = "\n".join(spooled)
    assert secret_forms_shown(spool_text) == []
    await proxy.start()
    await coordinator.api.wait_job(runner_id, job_id, TERMINAL)
    text = "\n".join(message for _, _, _, message in await stored(coordinator, job_id))
    assert secret_forms_shown(text) == []
    assert "key=[MASKED] plain=visible-value runner=[MASKED]" in text
    assert "split [MASKED] end" in text
    assert text.count("[MASKED]") >= 6


# --- the size policy end to end ----------------------------------------------------------------------------


async def test_past_the_limit_the_head_and_the_tail_are_kept(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(job_log_limit_bytes=64 * 1024, job_log_tail_bytes=16 * 1024)
    runner_id = agent.identity().runner_id
    job_id = await submit(coordinator.api, runner_id, "seq 1 100000")
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL)
    assert job["status"] == "completed"
    rows = await stored(coordinator, job_id)
    notice_at = next(i for i, row in enumerate(rows) if "limit" in row[3] and row[1] == "system")
    head, tail = numbers(rows[:notice_at]), numbers(rows[notice_at + 1 :])
    assert head == list(range(1, len(head) + 1))
    assert tail == list(range(100_001 - len(tail), 100_001))
    assert sum(len(str(n)) for n in head) <= 48 * 1024 < sum(len(str(n)) for n in range(1, len(head) + 2))
    dropped = range(len(head) + 1, 100_001 - len(tail))
    assert rows[notice_at][2] == "warn"
    assert f"dropped {sum(len(str(n)) for n in dropped)} bytes ({len(dropped)} lines)" in rows[notice_at][3]


async def test_on_log_limit_fail_fails_the_job_and_stops_its_step(
    coordinator: CoordinatorHandle, start_agent: StartAgent
) -> None:
    agent = await start_agent(job_log_limit_bytes=64 * 1024, job_log_tail_bytes=0)
    runner_id = agent.identity().runner_id
    job_id = await submit(coordinator.api, runner_id, "yes", on_log_limit="fail")  # would print forever
    job = await coordinator.api.wait_job(runner_id, job_id, TERMINAL, timeout=20)
    assert job["status"] == "failed"
    assert "limit" in job["reason"] and job["steps"][0]["status"] == "failed"
    rows = await stored(coordinator, job_id)
    assert sum(len(m) for _, stream, _, m in rows if stream == "stdout") <= 64 * 1024
    assert any(level == "error" and "limit" in m for _, _, level, m in rows)


async def test_memory_stays_bounded_while_a_step_prints_200_mb(
    coordinator: CoordinatorHandle, agent_process: StartAgentProcess, tmp_path: Path
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"job_log_limit_bytes: {16 * 1024 * 1024}\njob_log_tail_bytes: {1024 * 1024}\n")
    proc = agent_process(coordinator.url, state_name="big", RUSTCI_CONFIG=str(config))
    runner_id = await only_runner(coordinator.api)
    agent_mem, coordinator_mem = psutil.Process(proc.pid), psutil.Process()
    base = (agent_mem.memory_info().rss, coordinator_mem.memory_info().rss)
    peak = list(base)
    size = 200 * 1024 * 1024
    job_id = await submit(coordinator.api, runner_id, f"yes \"$(printf '%04095d' 0)\" | head -c {size}")

    async def done_sampling() -> bool:
        peak[0] = max(peak[0], agent_mem.memory_info().rss)
        peak[1] = max(peak[1], coordinator_mem.memory_info().rss)
        return (await coordinator.api.job(runner_id, job_id))["status"] in TERMINAL

    await wait_for(done_sampling, 60, interval=0.01, what="the 200 MB job to finish")
    grown = (peak[0] - base[0], peak[1] - base[1])
    # Nothing grows with the output: a few batches and buffers (about 20 MB here), not 200 MB.
    assert grown[0] < size // 5 and grown[1] < size // 5, f"RSS grew by {grown} for {size} bytes of output"
    rows = await stored(coordinator, job_id)
    assert sum(len(m) for _, stream, _, m in rows if stream == "stdout") <= 16 * 1024 * 1024
    assert any("dropped" in m for _, _, _, m in rows)
