"""``GET /api/openapi.json``: the API description (no credentials needed)."""

from __future__ import annotations

from aiohttp import web

from coordinator import openapi
from shared.http import json_response


async def openapi_document(request: web.Request) -> web.Response:
    return json_response(openapi.document())
