"""Every piece of application state, one ``web.AppKey`` each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from coordinator.audit import AuditLog
    from coordinator.auth import Credentials, Principal, TokenCache
    from coordinator.client_address import TrustedProxies
    from coordinator.config import CoordinatorConfig
    from coordinator.dashboard.session import Session, SessionTable
    from coordinator.dispatch import Dispatcher
    from coordinator.estimate import Estimator
    from coordinator.heartbeats import Heartbeats
    from coordinator.hub import Hub
    from coordinator.leadership import Leadership
    from coordinator.metrics import CoordinatorMetrics
    from coordinator.proxy import AgentClient
    from coordinator.ratelimit import RateLimiter
    from coordinator.routing import Router
    from coordinator.sse import LogFeed
    from coordinator.store.base import Store
    from coordinator.store.factory import Stores
    from coordinator.store.protocols import LogStore, MetricsStore
    from coordinator.tickets import TicketBook

CONFIG: web.AppKey[CoordinatorConfig] = web.AppKey("config")
CREDENTIALS: web.AppKey[Credentials] = web.AppKey("credentials")
RUNNER_TOKENS: web.AppKey[TokenCache] = web.AppKey("runner_tokens")
STORES: web.AppKey[Stores] = web.AppKey("stores")
"""Every store, for the configured engine (``coordinator.store.factory``); handlers use the keys below."""
STORE: web.AppKey[Store] = web.AppKey("store")
LOG_STORE: web.AppKey[LogStore] = web.AppKey("log_store")
AGENTS: web.AppKey[AgentClient] = web.AppKey("agents")
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher")
ROUTER: web.AppKey[Router] = web.AppKey("router")
ESTIMATOR: web.AppKey[Estimator] = web.AppKey("estimator")
HUB: web.AppKey[Hub] = web.AppKey("hub")
LOG_FEED: web.AppKey[LogFeed] = web.AppKey("log_feed")
PROMETHEUS: web.AppKey[CoordinatorMetrics] = web.AppKey("prometheus")
METRICS_STORE: web.AppKey[MetricsStore] = web.AppKey("metrics_store")
HEARTBEATS: web.AppKey[Heartbeats] = web.AppKey("heartbeats")
LEADERSHIP: web.AppKey[Leadership] = web.AppKey("leadership")
"""Whether this coordinator runs the fleet-wide duties (liveness, compaction) now."""

TICKETS: web.AppKey[TicketBook] = web.AppKey("tickets")
AUDIT: web.AppKey[AuditLog] = web.AppKey("audit")
TRUSTED_PROXIES: web.AppKey[TrustedProxies] = web.AppKey("trusted_proxies")
RATE_LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter")
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
DASHBOARD_SESSIONS: web.AppKey[SessionTable] = web.AppKey("dashboard_sessions")
DASHBOARD_SESSION: web.RequestKey[Session] = web.RequestKey("dashboard_session")
"""The dashboard session a request was authenticated with (absent for API keys and tokens in headers)."""
