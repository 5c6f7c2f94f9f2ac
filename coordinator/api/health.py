"""The coordinator's own liveness probe (no credentials needed)."""

from __future__ import annotations

from aiohttp import web

from shared.http import json_response
from shared.version import version


async def liveness(request: web.Request) -> web.Response:
    """``{"status": "ok", "version": ...}``: the release, so ``rustci version`` can show both ends."""
    return json_response({"status": "ok", "version": version()})
