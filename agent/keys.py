"""Application state of the agent's HTTP API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from agent.daemon import Agent
    from agent.sysinfo import DockerProbe

AGENT: web.AppKey[Agent] = web.AppKey("agent")
DOCKER_PROBE: web.AppKey[DockerProbe] = web.AppKey("docker_probe")
