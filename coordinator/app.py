"""``make_app``: the coordinator as an aiohttp application, read top to bottom like a table of contents."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from coordinator import auth, keys, liveness, scaleout
from coordinator.audit import AuditLog
from coordinator.client_address import TrustedProxies
from coordinator.config import CoordinatorConfig
from coordinator.dashboard.session import SessionTable
from coordinator.dispatch import Dispatcher
from coordinator.estimate import Estimator
from coordinator.heartbeats import Heartbeats
from coordinator.hub import Hub
from coordinator.log_retention import log_retention
from coordinator.metrics import CoordinatorMetrics
from coordinator.middlewares import setup_middlewares
from coordinator.proxy import AgentClient
from coordinator.ratelimit import RateLimiter
from coordinator.routes import setup_routes
from coordinator.routing import Router
from coordinator.sealing import Sealer
from coordinator.sse import setup_log_feed
from coordinator.store import factory
from coordinator.tickets import TicketBook
from shared.http import setup_server
from shared.tasks import TaskSet


async def _store(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    stores = factory.build(config, Sealer.for_state_dir(config.state_dir))
    await stores.open()
    app[keys.STORES] = stores
    app[keys.STORE] = stores.registry
    app[keys.LOG_STORE] = stores.logs
    app[keys.ESTIMATOR] = Estimator(stores.registry)
    yield
    await stores.close()


async def _agents(app: web.Application) -> AsyncIterator[None]:
    client = AgentClient(app[keys.CONFIG].agents)
    app[keys.AGENTS] = client
    yield
    await client.close()


async def _hub(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.CONFIG].websocket
    app[keys.HUB] = Hub(settings.queue_limit, settings.close_timeout)
    yield
    await app[keys.HUB].close()


async def _dispatcher(app: web.Application) -> AsyncIterator[None]:
    dispatcher = Dispatcher(app[keys.STORE], app[keys.AGENTS])
    app[keys.DISPATCHER] = dispatcher
    yield
    await dispatcher.close()


async def _router(app: web.Application) -> AsyncIterator[None]:
    hub = app[keys.HUB]
    router = Router(
        app[keys.STORE],
        app[keys.STORES].fleet,
        app[keys.AGENTS],
        app[keys.DISPATCHER],
        hub,
        app[keys.PROMETHEUS].registry,
    )
    app[keys.ROUTER] = router
    hub.listeners.append(router.observe)
    await router.open()
    yield
    hub.listeners.remove(router.observe)
    await router.close()


async def _fleet(app: web.Application) -> AsyncIterator[None]:
    """Leadership, the fleet bus, shared keys and rate-limit counters (``coordinator.scaleout``)."""
    stores = app[keys.STORES]
    services = scaleout.fleet_services(app, stores.shared)
    services.connect(app)
    app[keys.LEADERSHIP] = services.leadership
    if (credentials := await services.open(app[keys.CONFIG], stores.sealer)) is not None:
        app[keys.CREDENTIALS] = credentials
    yield
    await services.close()


async def _background(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    store, hub, runners = app[keys.STORE], app[keys.HUB], config.runners
    app[keys.LEADERSHIP].while_leader(
        "liveness",
        lambda: liveness.watch(store, hub, runners.liveness_multiplier, runners.liveness_check_interval),
    )
    yield


async def _metric_history(app: web.Application) -> AsyncIterator[None]:
    store, settings = app[keys.STORE], app[keys.CONFIG].metrics
    app[keys.METRICS_STORE] = metrics_store = app[keys.STORES].metrics
    runners = app[keys.CONFIG].runners
    app[keys.HEARTBEATS] = heartbeats = Heartbeats(
        store, metrics_store, runners.heartbeat_flush_interval, runners.heartbeat_max_pending
    )
    tasks = TaskSet("metrics")
    app[keys.LEADERSHIP].while_leader("compaction", lambda: metrics_store.compact_forever(settings.compaction_interval))
    tasks.spawn(heartbeats.flush_forever(), "heartbeats")
    yield
    await tasks.close()


async def _audit(app: web.Application) -> AsyncIterator[None]:
    app[keys.AUDIT] = trail = AuditLog(app[keys.STORES].audit, app[keys.CONFIG].audit.retention_days)
    await trail.start()
    yield
    await trail.close()


def make_app(config: CoordinatorConfig) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes)
    app[keys.CONFIG] = config
    setup_server(app, config.listen)
    app[keys.CREDENTIALS] = auth.load_credentials(config)
    app[keys.RUNNER_TOKENS] = auth.TokenCache()
    app[keys.RATE_LIMITER] = RateLimiter(config.rate_limits)
    app[keys.TICKETS] = TicketBook()
    app[keys.TRUSTED_PROXIES] = TrustedProxies(config.trusted_proxies)
    app[keys.PROMETHEUS] = CoordinatorMetrics()
    app[keys.DASHBOARD_SESSIONS] = SessionTable(config.dashboard)
    setup_middlewares(app)
    setup_routes(app)
    setup_log_feed(app)
    app.cleanup_ctx.extend([_store, _agents, _hub, _dispatcher, _router, _fleet, _background, _metric_history, _audit])
    app.cleanup_ctx.append(log_retention)
    # WebSocket clients and agent channels are closed before the cleanup contexts unwind.
    app.on_shutdown.append(lambda a: a[keys.HUB].close())
    app.on_shutdown.append(lambda a: a[keys.AGENTS].close())
    return app
