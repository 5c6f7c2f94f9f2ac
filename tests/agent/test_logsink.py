"""From bytes to spooled entries: the line splitter, masking, the per-job size policy and the spool bounds.

Real objects throughout: the executor's LineSplitter, the JobLog, and the Outbox on a real SQLite file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from agent.executors.lines import CONTINUED, Continued, LineSplitter
from agent.identity import Identity
from agent.logsink import MASK, TAIL_ENTRY_COST, JobLog, Masker
from agent.shipping import HIGH_WATER, Outbox
from agent.store import AgentStore
from shared import protocol

# --- the line splitter ----------------------------------------------------------------------------------------


def split(data: bytes, chunk: int = 65536, max_line: int = 65536) -> list[str]:
    splitter = LineSplitter(max_line)
    lines: list[str] = []
    for start in range(0, len(data), chunk):
        lines.extend(splitter.feed(data[start : start + chunk]))
    lines.extend(splitter.flush())
    return lines


@pytest.mark.parametrize("chunk", [1, 2, 3, 65536])
def test_invalid_utf8_is_replaced_in_any_chunking(chunk: int) -> None:
    data = b"ok \xff\xfe end\n" + "caf\u00e9 \u2603\n".encode() + b"\xe2\x98\n" + b"tail"
    assert split(data, chunk) == ["ok \ufffd\ufffd end", "caf\u00e9 \u2603", "\ufffd", "tail"]


def test_overlong_lines_are_cut_at_character_boundaries_with_a_marker() -> None:
    line = "\u00e9" * 40 + "!"  # 81 bytes of two-byte characters
    pieces = split(line.encode() + b"\nnext\n", max_line=16)
    assert pieces[-1] == "next"
    cut = pieces[:-1]
    assert all(isinstance(p, Continued) and p.endswith(CONTINUED) for p in cut[:-1])
    assert not isinstance(cut[-1], Continued)
    assert all(len(p.removesuffix(CONTINUED).encode()) <= 16 for p in cut)
    assert "".join(p.removesuffix(CONTINUED) for p in cut) == line  # nothing lost, no U+FFFD from a cut


def test_a_line_without_newline_never_holds_more_than_the_maximum() -> None:
    splitter = LineSplitter(1024)
    fed = emitted = 0
    for _ in range(200):
        chunk = b"x" * 4000
        fed += len(chunk)
        emitted += sum(len(p.removesuffix(CONTINUED)) for p in splitter.feed(chunk))
        assert fed - emitted <= 1024  # what is held back is at most one piece
    assert [len(p) for p in splitter.flush()] == [fed - emitted]


@pytest.mark.parametrize("chunk", [1, 4, 65536])
def test_carriage_return_progress_keeps_the_last_segment(chunk: int) -> None:
    data = b"10%\r50%\r100%\ncrlf line\r\n\rstarts with cr\nbar\r\r\n\r\nend 1\rend 2\r"
    assert split(data, chunk) == ["100%", "crlf line", "starts with cr", "bar", "", "end 2"]


def test_a_progress_bar_without_newline_holds_no_memory() -> None:
    splitter = LineSplitter()
    tracemalloc.start()
    try:
        for block in range(200):  # 200 chunks of 64 KiB of "\r"-overwritten progress, never a newline
            chunk = b"".join(b"progress %7d%%\r" % (block * 10_000 + i) for i in range(3_800))
            assert list(splitter.feed(chunk)) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024  # ~11 MB went through; only about the current chunk is ever held
    assert list(splitter.flush()) == ["progress 1993799%"]


# --- masking ---------------------------------------------------------------------------------------------------

SECRET = "s3cr3t/Val+ue?&="


class Lines:
    """The outbox's side of a JobLog: the encoded entries it receives, decoded."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def line(self, body: str) -> None:
        self.entries.append(json.loads(body))

    async def room(self) -> None:
        return None

    @property
    def messages(self) -> list[str]:
        return [e["message"] for e in self.entries]


def job_log(out: Lines, secrets: tuple[str, ...] = (SECRET,), **kw: Any) -> JobLog:
    kw.setdefault("limit", 1 << 30)
    kw.setdefault("tail", 1 << 20)
    return JobLog(out, "job_1", 2, secrets=secrets, **kw)


def test_every_form_of_a_secret_is_masked() -> None:
    raw = SECRET.encode()
    b64 = base64.b64encode
    shown = [
        SECRET,
        f"before {SECRET} after",
        b64(raw).decode(),
        b64(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        b64(raw + b"\n").decode(),  # echo "$SECRET" | base64
        *(b64(prefix + raw + b"@host").decode() for prefix in (b"u:", b"us:", b"use:")),  # inside a blob
        quote(SECRET, safe=""),
        quote_plus(SECRET),
        re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(SECRET, safe="")),  # lower-case escapes
        f"https://x.test/?token={quote(SECRET, safe='')}&b=1",
    ]
    out = Lines()
    sink = job_log(out).sink("build")
    for text in shown:
        sink("stdout", text)
    assert all(MASK in m for m in out.messages), out.messages
    for message in out.messages:
        for form in (SECRET, quote(SECRET, safe=""), b64(raw).decode()[:12], b64(b"u:" + raw).decode()[4:16]):
            assert form not in message
    assert out.messages[1] == f"before {MASK} after"
    assert out.messages[-1] == f"https://x.test/?token={MASK}&b=1"


def test_text_that_only_resembles_a_secret_is_left_alone() -> None:
    out = Lines()
    sink = job_log(out).sink("build")
    for text in ("s3cr3t", "Val+ue", "s3cr3t/Val", "ordinary output 123"):
        sink("stdout", text)
    assert out.messages == ["s3cr3t", "Val+ue", "s3cr3t/Val", "ordinary output 123"]


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_a_secret_written_in_pieces_is_masked(chunk: int) -> None:
    out = Lines()
    sink = job_log(out).sink("build")
    splitter = LineSplitter()
    data = f"export TOKEN={SECRET}; done\n".encode()
    for start in range(0, len(data), chunk):
        for line in splitter.feed(data[start : start + chunk]):
            sink("stdout", line)
    assert out.messages == [f"export TOKEN={MASK}; done"]


@pytest.mark.parametrize("offset", range(0, 40, 3))
def test_a_secret_cut_by_the_overlong_line_split_is_masked(offset: int) -> None:
    out = Lines()
    log = job_log(out)
    sink = log.sink("build")
    splitter = LineSplitter(16)
    text = "x" * offset + SECRET + "y" * 20
    for line in [*splitter.feed(text.encode() + b"\n"), *splitter.flush()]:
        sink("stdout", line)
    log.close()
    joined = "".join(m.removesuffix(CONTINUED) for m in out.messages)
    assert joined == "x" * offset + MASK + "y" * 20
    assert all(SECRET[:8] not in m for m in out.messages)


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        Masker(["abc"])


def test_without_secrets_output_is_untouched_and_entries_are_complete() -> None:
    out = Lines()
    log = job_log(out, secrets=())
    log.sink("build")("stderr", 'quote " backslash \\ tab \t unicode \u2603')
    log.system("info", "Step started: build", "build")
    first, second = out.entries
    assert first["message"] == 'quote " backslash \\ tab \t unicode \u2603'
    assert {k: first[k] for k in ("kind", "level", "job_id", "step", "stream", "attempt")} == {
        "kind": "log",
        "level": "warn",
        "job_id": "job_1",
        "step": "build",
        "stream": "stderr",
        "attempt": 2,
    }
    assert first["at"].endswith("Z") and len(first["at"]) == 24
    assert second["stream"] == "system" and second["level"] == "info" and second["step"] == "build"


# --- the size policy --------------------------------------------------------------------------------------------


def test_past_the_limit_head_and_tail_are_kept_with_one_entry_for_the_gap() -> None:
    out = Lines()
    log = job_log(out, secrets=(), limit=2_000, tail=800)
    sink = log.sink("build")
    lines = [f"line {i:05d}" for i in range(1000)]  # 10 bytes each: 10 000 bytes
    for line in lines:
        sink("stdout", line)
    log.system("info", "Step completed: build", "build")  # system entries are not counted
    log.close()
    messages = out.messages
    notice = [m for m in messages if "dropped" in m]
    assert len(notice) == 1
    at = messages.index(notice[0])
    head, tail = messages[:at], messages[at + 1 :]
    assert head[-1] == "Step completed: build"
    head = head[:-1]
    assert head == lines[:120]  # 1 200 bytes of head: the limit minus the tail
    per_line = 10 + TAIL_ENTRY_COST
    assert tail == lines[-(800 // per_line) :]
    dropped = len(lines) - len(head) - len(tail)
    assert f"dropped {dropped * 10} bytes ({dropped} lines)" in notice[0]
    assert out.entries[len(head) + 1]["level"] == "warn"


def test_under_the_limit_nothing_is_held_or_dropped() -> None:
    out = Lines()
    log = job_log(out, secrets=(), limit=2_000, tail=800)
    sink = log.sink("build")
    for i in range(100):
        sink("stdout", f"line {i:05d}")
    assert len(out.entries) == 100  # written at once, not held for the end
    log.close()
    assert len(out.entries) == 100


def test_fail_on_limit_fails_once_and_drops_the_rest() -> None:
    out = Lines()
    calls: list[str] = []
    log = job_log(out, secrets=(), limit=1_000, tail=0, fail_on_limit=True, on_failure=lambda: calls.append("x"))
    sink = log.sink("build")
    for i in range(500):
        sink("stdout", f"line {i:05d}")
    log.close()
    assert calls == ["x"]
    assert log.failure is not None and "limit" in log.failure
    assert out.messages[:100] == [f"line {i:05d}" for i in range(100)]
    assert len(out.entries) == 101 and out.entries[-1]["level"] == "error"


# --- the spool ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AgentStore]:
    store = AgentStore(tmp_path / "agent.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


IDENTITY = Identity("runner_1", "token", "http://127.0.0.1:9")


def log_body(i: int) -> str:
    return json.dumps({"kind": "log", "at": "2024-01-01T00:00:00.000Z", "level": "info", "message": f"{i:0150d}"})


async def outbox_rows(store: AgentStore) -> list[dict[str, Any]]:
    rows = await store.db.read(lambda conn: conn.execute("SELECT seq, body FROM outbox ORDER BY seq").fetchall())
    return [{"seq": seq, **json.loads(body)} for seq, body in rows]


async def on_disk(store: AgentStore) -> int:
    return int(
        await store.db.read(lambda c: c.execute("SELECT COALESCE(SUM(length(body)), 0) FROM outbox").fetchone()[0])
    )


async def test_a_full_spool_drops_the_oldest_log_entries_and_never_state_events(store: AgentStore) -> None:
    outbox = Outbox(store, lambda: IDENTITY, spool_max_bytes=64 * 1024)
    for i in range(3000):
        outbox.line(log_body(i))
        if i % 500 == 0:
            await outbox.emit(protocol.step_event("job_1", 1, i, "s", "running", "2024-01-01T00:00:00.000Z"))
        if i % 100 == 0:
            await outbox.flush()
    await outbox.flush()
    assert await outbox.spool_bytes() <= 64 * 1024
    rows = await outbox_rows(store)
    assert [r["index"] for r in rows if r["kind"] == "step"] == [0, 500, 1000, 1500, 2000, 2500]
    kept = [int(r["message"]) for r in rows if r["kind"] == "log" and r.get("stream") != "system"]
    assert kept == list(range(3000 - len(kept), 3000))  # the newest, in order
    notices = [r for r in rows if r.get("stream") == "system"]
    assert len(notices) == 1 and notices[0]["level"] == "warn"  # one entry, updated while undelivered
    dropped = int(notices[0]["message"].split()[1])
    assert dropped + len(kept) == 3000
    assert outbox.dropped_entries == dropped
    assert await outbox.spool_bytes() == await on_disk(store)  # counted exactly


async def test_entries_that_may_be_delivered_are_not_dropped_and_acks_free_the_spool(store: AgentStore) -> None:
    outbox = Outbox(store, lambda: IDENTITY, spool_max_bytes=64 * 1024)
    for i in range(100):
        outbox.line(log_body(i))
    await outbox.flush()
    batch = await outbox.pending_batch("runner_1")  # handed to the shipper, not acknowledged yet
    assert batch is not None
    events = json.loads(f"[{batch.events}]")
    assert [e["seq"] for e in events] == list(range(1, batch.count + 1)) and batch.last_seq == batch.count
    in_flight = [e["message"] for e in events]
    assert in_flight == [f"{i:0150d}" for i in range(batch.count)]
    assert sum(len(log_body(i)) for i in range(batch.count - 1)) < 16 * 1024  # a quarter of the spool at most
    for i in range(100, 2000):
        outbox.line(log_body(i))
    await outbox.flush()
    assert [r["message"] for r in await outbox_rows(store)][: batch.count] == in_flight  # kept
    # The send broke off after it left: the batch may be at the coordinator, so it is still kept.
    outbox.unsent(batch, maybe_delivered=True)
    for i in range(2000, 3000):
        outbox.line(log_body(i))
    await outbox.flush()
    assert [r["message"] for r in await outbox_rows(store)][: batch.count] == in_flight
    # Acknowledged: gone, and the spool's size follows what is on disk.
    await outbox.acknowledge("runner_1", batch.last_seq)
    assert await outbox.spool_bytes() == await on_disk(store)
    await outbox.acknowledge("runner_1", (await outbox_rows(store))[-1]["seq"])
    assert await outbox.spool_bytes() == 0


async def test_a_batch_refused_before_it_was_sent_can_be_dropped(store: AgentStore) -> None:
    outbox = Outbox(store, lambda: IDENTITY, spool_max_bytes=64 * 1024)
    for i in range(100):
        outbox.line(log_body(i))
    await outbox.flush()
    batch = await outbox.pending_batch("runner_1")
    assert batch is not None
    outbox.unsent(batch, maybe_delivered=False)  # connection refused: certainly not delivered
    for i in range(100, 2000):
        outbox.line(log_body(i))
    await outbox.flush()
    kept = [int(r["message"]) for r in await outbox_rows(store) if r.get("stream") != "system"]
    assert kept == list(range(2000 - len(kept), 2000))  # the oldest went first, the batch included


async def test_the_memory_buffer_is_bounded_when_the_writer_cannot_keep_up(store: AgentStore) -> None:
    outbox = Outbox(store, lambda: IDENTITY, memory_max_bytes=64 * 1024)
    # No await in between: the writer gets no chance to run, as if the disk had stalled.
    for i in range(5000):
        outbox.line(log_body(i))
    assert outbox.dropped_entries > 0
    await outbox.flush()
    rows = await outbox_rows(store)
    kept = [int(r["message"]) for r in rows if r.get("stream") != "system"]
    assert sum(len(log_body(i)) for i in kept) <= 64 * 1024
    assert kept == list(range(5000 - len(kept), 5000))
    (notice,) = [r for r in rows if r.get("stream") == "system"]
    assert int(notice["message"].split()[1]) == outbox.dropped_entries == 5000 - len(kept)


async def test_output_waits_for_the_writer_once_it_is_far_behind(store: AgentStore) -> None:
    outbox = Outbox(store, lambda: IDENTITY)
    await outbox.room()  # nothing buffered: no wait
    sent = 0
    while sent <= HIGH_WATER:
        body = log_body(sent)
        outbox.line(body)
        sent += len(body)
    waiter = asyncio.create_task(outbox.room())
    done, _ = await asyncio.wait([waiter], timeout=0.05)
    assert not done  # the reader is held until the writer takes the buffer
    await outbox.flush()
    await asyncio.wait_for(waiter, timeout=5)
    assert outbox.dropped_entries == 0


async def test_shedding_under_memory_pressure_keeps_step_events(store: AgentStore) -> None:
    outbox = Outbox(store, lambda: IDENTITY, memory_max_bytes=64 * 1024)
    step = protocol.step_event("job_1", 1, 0, "s", "running", "2024-01-01T00:00:00.000Z")
    for i in range(5000):
        outbox.line(log_body(i))
        if i == 10:
            outbox.emit_nowait(step)  # queued early: the oldest entries are the first to be shed
    assert outbox.dropped_entries > 0
    await outbox.flush()
    rows = await outbox_rows(store)
    steps = [r for r in rows if r["kind"] == "step"]
    assert len(steps) == 1 and steps[0]["status"] == "running"
    kept = [int(r["message"]) for r in rows if r["kind"] == "log" and r.get("stream") != "system"]
    assert 10 not in kept  # the lines around it were shed, the event was not
