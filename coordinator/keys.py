"""Every piece of application state, one ``web.AppKey`` each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    pass

CONFIG = web.AppKey["CoordinatorConfig"]("config")
CREDENTIALS = web.AppKey["Credentials"]("credentials")
STORE = web.AppKey["Store"]("store")
AGENTS = web.AppKey["AgentClient"]("agents")
DISPATCHER = web.AppKey["Dispatcher"]("dispatcher")
HUB = web.AppKey["Hub"]("hub")

PRINCIPAL = web.RequestKey["Principal"]("principal")
