"""Handlers for a runner's live configuration, control (stop/start/restart) and job cancel."""

from __future__ import annotations

from aiohttp import web

from coordinator import control
from coordinator.api.runners import get_runner_or_404
from shared.http import json_response, read_json


async def get_config(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    return json_response(await control.get_config(request.app, runner))


async def put_config(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    body = await read_json(request)
    return json_response(await control.update_config(request.app, runner, body))


async def _control(request: web.Request, action: str) -> web.Response:
    runner = await get_runner_or_404(request)
    body = control.control_body(action, await read_json(request, optional=True))
    return json_response(await control.control(request.app, runner, action, body))


async def start_runner(request: web.Request) -> web.Response:
    return await _control(request, "start")


async def stop_runner(request: web.Request) -> web.Response:
    return await _control(request, "stop")


async def restart_runner(request: web.Request) -> web.Response:
    return await _control(request, "restart")


async def cancel_job(request: web.Request) -> web.Response:
    runner = await get_runner_or_404(request)
    return json_response(await control.cancel_job(request.app, runner, request.match_info["job_id"]))
