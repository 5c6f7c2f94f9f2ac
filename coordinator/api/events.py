"""The live-event shapes sent to WebSocket clients (``runner_status_change`` as the spec shows it)."""

from __future__ import annotations

from typing import Any

from coordinator.store.base import StatusChange
from shared.timeutil import from_epoch, isoformat


def status_change(change: StatusChange) -> dict[str, Any]:
    at = isoformat(from_epoch(change.at))
    if change.kind == "runner":
        return {
            "type": "runner_status_change",
            "runner_id": change.runner_id,
            "old_status": change.old_status,
            "new_status": change.new_status,
            "timestamp": at,
        }
    return {
        "type": "job_status_change",
        "runner_id": change.runner_id,
        "job_id": change.id,
        "old_status": change.old_status,
        "new_status": change.new_status,
        "timestamp": at,
    }


def runner_event(kind: str, runner_id: str, at: float, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "runner_id": runner_id, "timestamp": isoformat(from_epoch(at)), **extra}
