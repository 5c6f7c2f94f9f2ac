"""``GET /api/openapi.json``: the API description (no credentials needed)."""

from __future__ import annotations

from aiohttp import web

from shared.http import json_response


async def openapi_document(request: web.Request) -> web.Response:
    # The generator (and pydantic's JSON-schema machinery) loads on the first request, not at every start.
    from coordinator import openapi

    return json_response(openapi.document())
