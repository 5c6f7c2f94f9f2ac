"""Application state of the agent's HTTP API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    pass

AGENT = web.AppKey["Agent"]("agent")
