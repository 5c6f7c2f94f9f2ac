"""Every piece of application state, one ``web.AppKey`` each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from coordinator.auth import Credentials, Principal, TokenCache
    from coordinator.config import CoordinatorConfig
    from coordinator.dispatch import Dispatcher
    from coordinator.estimate import Estimator
    from coordinator.heartbeats import Heartbeats
    from coordinator.hub import Hub
    from coordinator.metrics import CoordinatorMetrics
    from coordinator.proxy import AgentClient
    from coordinator.ratelimit import RateLimiter
    from coordinator.sse import LogFeed
    from coordinator.store.base import Store
    from coordinator.store.metrics import MetricsStore

CONFIG: web.AppKey[CoordinatorConfig] = web.AppKey("config")
CREDENTIALS: web.AppKey[Credentials] = web.AppKey("credentials")
RUNNER_TOKENS: web.AppKey[TokenCache] = web.AppKey("runner_tokens")
STORE: web.AppKey[Store] = web.AppKey("store")
AGENTS: web.AppKey[AgentClient] = web.AppKey("agents")
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher")
ESTIMATOR: web.AppKey[Estimator] = web.AppKey("estimator")
HUB: web.AppKey[Hub] = web.AppKey("hub")
LOG_FEED: web.AppKey[LogFeed] = web.AppKey("log_feed")
PROMETHEUS: web.AppKey[CoordinatorMetrics] = web.AppKey("prometheus")
METRICS_STORE: web.AppKey[MetricsStore] = web.AppKey("metrics_store")
HEARTBEATS: web.AppKey[Heartbeats] = web.AppKey("heartbeats")

RATE_LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter")
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
