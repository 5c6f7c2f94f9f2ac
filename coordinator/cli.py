"""``rustci-coordinator``: load the config, set up logging, serve until SIGTERM or Ctrl-C.

``rustci-coordinator token --subject NAME --role ROLE`` prints a bearer JWT signed with this coordinator's
secret (read from the state directory of the coordinator that runs with the same config, ``-c`` and
``RUSTCI_STATE_DIR``; it never creates keys, see :mod:`coordinator.statedir`) instead of serving;
``rustci-coordinator key create --name NAME --role ROLE`` prints a new named API key
and the config entry (with its hash) that enables it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import structlog
from aiohttp import web

from coordinator import api_keys, service, statedir, tls, tokens
from coordinator import config as config_module
from coordinator.app import make_app
from shared import lifeline, logs
from shared.config import ConfigError
from shared.statefiles import EXIT_DAMAGED_STATE, DamagedState
from shared.systemd import Notifier

ROLES_HELP = (
    "admin: everything; operator: all but deleting runners and the audit trail; viewer: read-only; "
    "registrar: only register runners"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rustci-coordinator", description="RustCI Runner coordinator")
    parser.add_argument("-c", "--config", type=Path, default=os.environ.get("RUSTCI_CONFIG"), help="YAML config file")
    commands = parser.add_subparsers(dest="command")
    token = commands.add_parser("token", help="print a bearer JWT for the API")
    token.add_argument("--subject", required=True, help="who the token is for (its 'sub')")
    token.add_argument("--role", choices=tokens.ROLES, default="viewer", help=ROLES_HELP)
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    key = commands.add_parser("key", help="manage named API keys").add_subparsers(dest="key_command", required=True)
    create = key.add_parser("create", help="print a new API key and the config entry that enables it")
    create.add_argument("--name", required=True, help="who holds the key (shown in the audit trail)")
    create.add_argument("--role", choices=config_module.KEY_ROLES, required=True, help=ROLES_HELP)
    migrate = commands.add_parser(
        "migrate-store", help="copy this coordinator's SQLite store into an empty PostgreSQL database"
    )
    migrate.add_argument("--to", required=True, metavar="postgresql://USER[:PASSWORD]@HOST:PORT/DB")
    args = parser.parse_args(argv)
    if args.command == "key":
        try:
            print(api_keys.describe(api_keys.create(args.name, args.role)))
        except ValueError as e:
            print(
                f"rustci-coordinator: --name must be 1-64 letters, digits, '.', '_', '@' or '-' ({e})", file=sys.stderr
            )
            return 2
        return 0
    try:
        config = config_module.load(args.config)
        ssl_context = tls.server_context(config.tls)
    except ConfigError as e:
        print(f"rustci-coordinator: {e}", file=sys.stderr)
        return 2
    if args.command == "token":
        if not 1 <= args.ttl <= 366 * 24 * 3600:
            print("rustci-coordinator: --ttl must be between 1 second and 366 days", file=sys.stderr)
            return 2
        try:
            secret = statedir.jwt_secret(config)
        except statedir.StateNotFound as e:
            print(f"rustci-coordinator: {e}", file=sys.stderr)
            return 1
        settings = config.auth.jwt
        print(
            tokens.issue(
                secret,
                args.subject,
                args.role,
                args.ttl,
                issuer=settings.issuer,
                audience=settings.audience,
                role_claim=settings.role_claim,
            )
        )
        return 0
    if args.command == "migrate-store":
        return _migrate_store(config, args.to)
    logs.configure(config.log.level, config.log.format, component="coordinator")  # type: ignore[arg-type]
    log = structlog.get_logger("coordinator")
    try:
        app = make_app(config)
    except ConfigError as e:
        print(f"rustci-coordinator: {e}", file=sys.stderr)
        return 2
    scheme = "https" if ssl_context is not None else "http"

    async def announce(_: web.Application) -> None:
        if config.plaintext_off_loopback:
            log.warning(
                "serving plain HTTP on a non-loopback address: credentials and job secrets cross the network in "
                "clear text; configure tls.cert_file and tls.key_file",
                host=config.listen.host,
            )
        log.info(
            "coordinator listening",
            url=f"{scheme}://{config.listen.host}:{config.listen.port}/api",
            tls=ssl_context is not None,
            mutual_tls=config.tls.client_ca_file is not None,
            database=config.database_name,
        )

    async def stop_with_launcher(_: web.Application) -> None:
        # Stop as on SIGTERM (run_app's graceful shutdown) when a launcher that started this process exits.
        lifeline.watch(asyncio.get_running_loop(), lambda: os.kill(os.getpid(), signal.SIGTERM))

    app.on_startup.append(announce)
    app.on_startup.append(stop_with_launcher)
    notifier = Notifier.from_environment()
    service.setup_service(app, notifier, args.config)
    try:
        web.run_app(
            app,
            host=config.listen.host,
            port=config.listen.port,
            ssl_context=ssl_context,
            # run_app calls ``print`` once every site listens: the moment to say READY=1.
            print=lambda _: service.announce_ready(app, notifier),
            access_log=None,
            shutdown_timeout=10,
            handle_signals=True,
        )
    except DamagedState as e:
        print(f"rustci-coordinator: {e}", file=sys.stderr)
        return EXIT_DAMAGED_STATE
    except ConfigError as e:  # found at start, when the stores are built (``coordinator.store.factory``)
        print(f"rustci-coordinator: {e}", file=sys.stderr)
        return 2
    log.info("coordinator stopped")
    return 0


def _migrate_store(config: config_module.CoordinatorConfig, target: str) -> int:
    from coordinator import migrate_store

    if not target.startswith(("postgresql://", "postgres://")):
        print("rustci-coordinator: --to must be a postgresql://USER[:PASSWORD]@HOST:PORT/DB URL", file=sys.stderr)
        return 2
    try:
        copied = asyncio.run(migrate_store.migrate(config, target))
    except (migrate_store.MigrationRefused, DamagedState) as e:
        print(f"rustci-coordinator: {e}", file=sys.stderr)
        return 1
    for table, rows in copied.rows.items():
        print(f"{table}: {rows} rows")
    print(f"generated keys: {', '.join(copied.keys) or 'none (configured in the config file)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
