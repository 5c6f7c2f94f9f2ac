"""Applying a batch of agent events to the job index and the log, exactly once, in order.

Each runner has a high-water mark, the highest event sequence applied. Events at or below it were applied
before (the agent resent them because an acknowledgement was lost); the rest are applied in sequence order
and the mark advances in the same transaction, so resending is always safe.
"""

from __future__ import annotations

import sqlite3

from coordinator.store import logs
from coordinator.store.base import StatusChange
from coordinator.store.chunks import LEVELS, EpochSeconds, Run
from shared.models import TERMINAL_JOB_STATUSES, AgentEvent, JobEvent, StepEvent


def apply(conn: sqlite3.Connection, runner_id: str, events: list[AgentEvent]) -> tuple[int, list[StatusChange]] | None:
    """Apply, in one transaction, the events numbered past the runner's high-water mark and advance it."""
    row = conn.execute("SELECT event_seq FROM runners WHERE id = ?", (runner_id,)).fetchone()
    if row is None:
        return None
    mark = int(row["event_seq"])
    changes: list[StatusChange] = []
    runs: list[Run] = []  # the log entries, cut where the job or step changes
    run = Run(None, None, [])
    epoch = EpochSeconds()
    for event in sorted(events, key=lambda e: e.seq):
        if event.seq <= mark:
            continue
        if isinstance(event, JobEvent):
            change = _apply_job_event(conn, runner_id, event)
            if change:
                changes.append(change)
        elif isinstance(event, StepEvent):
            _apply_step_event(conn, runner_id, event)
        else:
            if not runs or event.job_id != run.job_id or event.step != run.step:
                run = Run(event.job_id, event.step, [])
                runs.append(run)
            run.rows.append(
                [event.seq, epoch(event.at), LEVELS[event.level], event.stream, event.attempt, event.message]
            )
        mark = event.seq
    logs.write(conn, runner_id, runs)  # as chunks: see coordinator.store.chunks
    conn.execute("UPDATE runners SET event_seq = ? WHERE id = ?", (mark, runner_id))
    return mark, changes


def _apply_job_event(conn: sqlite3.Connection, runner_id: str, event: JobEvent) -> StatusChange | None:
    at = event.at.timestamp()
    row = conn.execute(
        "SELECT status, started_at FROM jobs WHERE id = ? AND runner_id = ?", (event.job_id, runner_id)
    ).fetchone()
    if row is None:
        return None
    terminal = event.status in TERMINAL_JOB_STATUSES and event.final
    # The attempt's own record.
    if event.status == "running":
        conn.execute(
            "INSERT INTO job_attempts (job_id, attempt, status, started_at) VALUES (?, ?, 'running', ?)"
            " ON CONFLICT (job_id, attempt) DO UPDATE SET status = 'running', started_at = excluded.started_at",
            (event.job_id, event.attempt, at),
        )
    elif event.attempt > 0:
        conn.execute(
            "INSERT INTO job_attempts (job_id, attempt, status, exit_code, reason, completed_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt) DO UPDATE SET status = excluded.status,"
            " exit_code = excluded.exit_code, reason = excluded.reason, completed_at = excluded.completed_at",
            (event.job_id, event.attempt, event.status, event.exit_code, event.reason, at),
        )
    old = row["status"]
    if old in TERMINAL_JOB_STATUSES:
        # A job ends in exactly one terminal state: the first one recorded stands.
        return None
    if terminal:
        conn.execute(
            "UPDATE jobs SET status = ?, attempt = MAX(attempt, ?), exit_code = ?, reason = ?, completed_at = ?,"
            " delivered = 1 WHERE id = ?",
            (event.status, event.attempt, event.exit_code, event.reason, at, event.job_id),
        )
    elif event.status not in TERMINAL_JOB_STATUSES:
        conn.execute(
            "UPDATE jobs SET status = ?, attempt = ?, started_at = COALESCE(started_at, ?), delivered = 1 WHERE id = ?",
            (event.status, event.attempt, at if event.status == "running" else None, event.job_id),
        )
    else:
        return None  # an attempt ended and another follows: the job stays running
    if old == event.status:
        return None
    return StatusChange("job", event.job_id, runner_id, old, event.status, at)


def _apply_step_event(conn: sqlite3.Connection, runner_id: str, event: StepEvent) -> None:
    at = event.at.timestamp()
    owned = conn.execute("SELECT 1 FROM jobs WHERE id = ? AND runner_id = ?", (event.job_id, runner_id)).fetchone()
    if owned is None:
        return
    if event.status == "running":
        conn.execute(
            "INSERT INTO job_steps (job_id, attempt, idx, name, status, started_at) VALUES (?, ?, ?, ?, 'running', ?)"
            " ON CONFLICT (job_id, attempt, idx) DO UPDATE SET status = 'running', started_at = excluded.started_at",
            (event.job_id, event.attempt, event.index, event.name, at),
        )
    else:
        conn.execute(
            "INSERT INTO job_steps (job_id, attempt, idx, name, status, exit_code, completed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt, idx) DO UPDATE SET"
            " status = excluded.status, exit_code = excluded.exit_code, completed_at = excluded.completed_at",
            (event.job_id, event.attempt, event.index, event.name, event.status, event.exit_code, at),
        )
