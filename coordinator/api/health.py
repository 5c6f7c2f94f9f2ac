"""The coordinator's own liveness probe (no credentials needed)."""

from __future__ import annotations

from aiohttp import web

from shared.http import json_response


async def liveness(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})
