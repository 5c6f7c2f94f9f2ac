"""What agents send the coordinator: the channel they open, and on it (or over HTTP) heartbeats and event batches.

All are authenticated with the runner's own token. Events are applied exactly once by sequence number and
acknowledged with the highest applied sequence; the agent deletes only what was acknowledged.

``GET /runners/{id}/channel`` is the agent's WebSocket (``shared.protocol``). Its first message is the agent's
``hello`` (host, port, capabilities, metadata: information only); then the coordinator's calls to the agent go
out on it (``coordinator.proxy``) while the agent's heartbeats, event batches and any later ``hello`` (its
limits changed) come in. Incoming requests
are handled one after the other in arrival order, so batches are applied in the order they were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from pydantic import ValidationError

from coordinator import keys
from coordinator.api import events
from coordinator.api.runners import get_runner_or_404
from coordinator.proxy import AgentLink
from coordinator.store.base import RunnerChanges, RunnerRecord
from shared import protocol
from shared.errors import ApiError, InternalError, InvalidRequest, RunnerNotFound
from shared.http import dumps, json_response, parse_body, validation_error
from shared.models import (
    TERMINAL_JOB_STATUSES,
    AgentEvent,
    EventAck,
    EventBatch,
    Heartbeat,
    HeartbeatAck,
    RunnerStatus,
)

log = structlog.get_logger(__name__)

_STATE_TO_STATUS: dict[str, RunnerStatus] = {
    "running": "active",
    "stopped": "stopped",
    "starting": "starting",
    "restarting": "restarting",
    "error": "error",  # its executor cannot run jobs (e.g. the Docker engine is down); jobs are held
}


# --- what both transports do ----------------------------------------------------------------------------


async def record_heartbeat(app: web.Application, runner_id: str, beat: Heartbeat) -> RunnerStatus:
    """Record one heartbeat; returns the runner's status now. A heartbeat that keeps the status costs no
    database round trip and wakes the delivery worker only while something may be held for the runner."""
    status: RunnerStatus = _STATE_TO_STATUS[beat.state]
    now = time.time()
    heartbeats = app[keys.HEARTBEATS]
    change = await heartbeats.record(runner_id, beat.load, status, beat.heartbeat_interval, beat.samples, now)
    if change is None:
        raise RunnerNotFound(runner_id)
    if change.old_status != change.new_status:
        app[keys.HUB].publish(events.status_change(change))
        app[keys.DISPATCHER].kick(runner_id)
    else:
        app[keys.DISPATCHER].heard_from(runner_id)
    return status


async def apply_events(app: web.Application, runner_id: str, batch: list[AgentEvent]) -> EventAck:
    metrics, metrics_store = app[keys.PROMETHEUS], app[keys.METRICS_STORE]
    mark = await metrics.mark_before(metrics_store, runner_id)
    applied = await app[keys.STORE].apply_events(runner_id, batch)
    if applied is None:
        raise RunnerNotFound(runner_id)
    acked, changes = applied
    app[keys.LOG_FEED].publish(runner_id, batch)  # live log followers (SSE)
    app[keys.AGENTS].bus.publish_logs(runner_id, batch)  # and those on the other coordinators of a fleet
    hub = app[keys.HUB]
    for change in changes:
        hub.publish(events.status_change(change))
        if change.new_status in TERMINAL_JOB_STATUSES:
            app[keys.ESTIMATOR].job_finished(runner_id)
    await metrics.observe_ingest(metrics_store, runner_id, batch, mark, acked, changes)
    return EventAck(acked_seq=acked)


async def announce(app: web.Application, runner: RunnerRecord, hello: protocol.Hello) -> None:
    """Record what the agent said about itself at connect (a sign of life, like a heartbeat)."""
    now = time.time()
    metadata = {**runner.metadata, **hello.metadata}
    if hello.version:
        metadata["agent_version"] = hello.version
    interval = metadata.get("heartbeat_interval")
    if not (isinstance(interval, int | float) and not isinstance(interval, bool) and 0 < interval <= 3600):
        interval = None
    changes = RunnerChanges(
        host=hello.host,
        port=hello.port,
        capabilities=list(dict.fromkeys(hello.capabilities)),
        tags=list(dict.fromkeys(hello.tags)),
        metadata=metadata,
        last_seen=now,
        heartbeat_interval=None if interval is None else float(interval),
        resources=hello.resources.model_dump(exclude_none=True) if hello.resources is not None else None,
    )
    await app[keys.STORE].update_runner(runner.id, changes, now)
    fields = sorted(set(changes.names()) - {"heartbeat_interval", "last_seen"})
    app[keys.HUB].publish(events.runner_event("runner_updated", runner.id, now, fields=fields))


# --- HTTP -----------------------------------------------------------------------------------------------


async def heartbeat(request: web.Request) -> web.Response:
    beat = await parse_body(request, Heartbeat)
    runner_id = request.match_info["runner_id"]
    return json_response(HeartbeatAck(runner_id=runner_id, status=await record_heartbeat(request.app, runner_id, beat)))


async def ingest_events(request: web.Request) -> web.Response:
    # The busiest body the coordinator reads (every log line of every job): validated straight from the
    # raw JSON by pydantic-core, which skips building the intermediate Python objects (about 40% less time).
    try:
        batch = EventBatch.model_validate_json(await request.read())
    except ValidationError as e:
        raise validation_error(e) from e
    return json_response(await apply_events(request.app, request.match_info["runner_id"], batch.events))


# --- the channel ----------------------------------------------------------------------------------------


async def channel(request: web.Request) -> web.WebSocketResponse:
    runner = await get_runner_or_404(request)
    app = request.app
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=app[keys.CONFIG].max_body_bytes)
    await ws.prepare(request)
    bound = log.bind(runner_id=runner.id)
    link = AgentLink(runner.id, ws)
    try:
        # A write to an agent that went away mid-answer ends the channel like its close does, not as an error.
        with contextlib.suppress(ConnectionError):
            if not await _greet(app, runner, ws):
                return ws
            old = app[keys.AGENTS].attach(link)
            if old is not None:
                await old.ws.close(message=b"replaced by a newer connection of the runner's agent")
            bound.info("agent connected", host=runner.host)
            app[keys.DISPATCHER].kick(runner.id)  # deliver what was held while it was away
            app[keys.ROUTER].wake()  # it may qualify for jobs held for the fleet
            await _serve(app, runner.id, ws, link)
    finally:
        app[keys.AGENTS].detach(link)
        if not ws.closed:
            with contextlib.suppress(ConnectionError):  # the agent's end is already gone
                await ws.close()
        bound.info("agent disconnected")
    return ws


async def _greet(app: web.Application, runner: RunnerRecord, ws: web.WebSocketResponse) -> bool:
    """Wait for the agent's ``hello``, record it and welcome the agent; ``False`` if it never came."""
    try:
        async with asyncio.timeout(protocol.HELLO_TIMEOUT):
            message = await ws.receive()
    except TimeoutError:
        await ws.close(message=b"no hello")
        return False
    if message.type is not WSMsgType.TEXT:
        return False
    try:
        frame = protocol.AGENT_FRAMES.validate_json(message.data)
    except ValidationError as e:
        await ws.send_str(_error_frame(0, validation_error(e)))
        await ws.close(message=b"the first message must be a hello")
        return False
    if not isinstance(frame, protocol.HelloFrame):
        await ws.send_str(_error_frame(frame.id, InvalidRequest("The first message must be a hello", field="kind")))
        await ws.close(message=b"the first message must be a hello")
        return False
    await announce(app, runner, frame.body)
    await ws.send_str(protocol.reply(frame.id, protocol.Welcome(runner_id=runner.id)))
    return True


async def _serve(app: web.Application, runner_id: str, ws: web.WebSocketResponse, link: AgentLink) -> None:
    acks: dict[str, str] = {}  # the heartbeat answer's JSON by status, encoded once per connection
    async for message in ws:
        if message.type is not WSMsgType.TEXT:
            if message.type is WSMsgType.ERROR:
                break
            continue
        try:
            frame = protocol.AGENT_FRAMES.validate_json(message.data)
        except ValidationError as e:
            await ws.send_str(_error_frame(_frame_id(message.data), validation_error(e)))
            continue
        if isinstance(frame, protocol.ReplyFrame | protocol.ErrorFrame):
            link.answered(frame)
            continue
        try:
            if isinstance(frame, protocol.EventsFrame):
                answer: Any = await apply_events(app, runner_id, frame.body.events)
            elif isinstance(frame, protocol.HeartbeatFrame):
                status = await record_heartbeat(app, runner_id, frame.body)
                ack = acks.get(status)
                if ack is None:
                    ack = acks[status] = HeartbeatAck(runner_id=runner_id, status=status).model_dump_json()
                await ws.send_str(protocol.raw_reply(frame.id, ack))
                continue
            else:  # a new announcement (its limits changed)
                runner = await app[keys.STORE].get_runner(runner_id)
                if runner is None:
                    raise RunnerNotFound(runner_id)
                await announce(app, runner, frame.body)
                answer = protocol.Welcome(runner_id=runner_id)
        except ApiError as e:
            await ws.send_str(_error_frame(frame.id, e))
            continue
        except Exception:
            log.exception("agent request failed", runner_id=runner_id, kind=frame.kind)
            await ws.send_str(_error_frame(frame.id, InternalError("The coordinator failed to handle the request")))
            continue
        await ws.send_str(protocol.reply(frame.id, answer))


def _error_frame(frame_id: int, error: ApiError) -> str:
    return protocol.error(frame_id, error.status, dumps(error.envelope()))


def _frame_id(text: str) -> int:
    """The id of a frame that did not validate, if it has one, so its sender's wait ends now."""
    try:
        raw = protocol.FrameId.model_validate_json(text)
    except ValidationError:
        return 0
    return raw.id
