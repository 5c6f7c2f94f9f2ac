"""Application state of the agent's HTTP API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from agent.daemon import Agent

AGENT: web.AppKey[Agent] = web.AppKey("agent")
