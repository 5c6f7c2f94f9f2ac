"""The coordinator's own health probe (no credentials needed).

``ok``, or ``degraded`` with the reason while its storage refuses writes (disk full, read-only): the process
is alive and serves reads, so a supervisor should not restart it, but new work is refused with 503
``STORAGE_UNAVAILABLE``. It turns back to ``ok`` by itself once the storage accepts writes again.
"""

from __future__ import annotations

from aiohttp import web

from coordinator import keys
from shared.http import json_response
from shared.version import version


async def liveness(request: web.Request) -> web.Response:
    """``{"status": "ok", "version": ...}`` (the release, so ``rustci version`` can show both ends), or
    ``degraded`` with the storage check while the database cannot be written."""
    problem = await request.app[keys.STORE].storage_problem()
    if problem is None:
        return json_response({"status": "ok", "version": version()})
    storage = {"status": "unavailable", "reason": problem}
    return json_response({"status": "degraded", "version": version(), "checks": {"storage": storage}})
