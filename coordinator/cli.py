"""``rustci-coordinator``: load the config, set up logging, serve until SIGTERM or Ctrl-C.

``rustci-coordinator token --subject NAME --role admin|viewer`` prints a bearer JWT signed with this
coordinator's secret instead of serving.
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

from coordinator import auth, tokens
from coordinator import config as config_module
from coordinator.app import make_app
from shared import lifeline, logs
from shared.config import ConfigError
from shared.statefiles import EXIT_DAMAGED_STATE, DamagedState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rustci-coordinator", description="RustCI Runner coordinator")
    parser.add_argument("-c", "--config", type=Path, default=os.environ.get("RUSTCI_CONFIG"), help="YAML config file")
    commands = parser.add_subparsers(dest="command")
    token = commands.add_parser("token", help="print a bearer JWT for the API")
    token.add_argument("--subject", required=True, help="who the token is for (its 'sub')")
    token.add_argument("--role", choices=tokens.ROLES, default="viewer", help="admin: everything; viewer: read-only")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config)
    except ConfigError as e:
        print(f"rustci-coordinator: {e}", file=sys.stderr)
        return 2
    if args.command == "token":
        if not 1 <= args.ttl <= 366 * 24 * 3600:
            print("rustci-coordinator: --ttl must be between 1 second and 366 days", file=sys.stderr)
            return 2
        secret = auth.load_credentials(config).jwt_secret
        print(tokens.issue(secret, args.subject, args.role, args.ttl))
        return 0
    logs.configure(config.log.level, config.log.format)  # type: ignore[arg-type]
    log = structlog.get_logger("coordinator")
    app = make_app(config)

    async def announce(_: web.Application) -> None:
        log.info(
            "coordinator listening",
            url=f"http://{config.listen.host}:{config.listen.port}/api",
            database=str(config.database_path),
        )

    async def stop_with_launcher(_: web.Application) -> None:
        # Stop as on SIGTERM (run_app's graceful shutdown) when a launcher that started this process exits.
        lifeline.watch(asyncio.get_running_loop(), lambda: os.kill(os.getpid(), signal.SIGTERM))

    app.on_startup.append(announce)
    app.on_startup.append(stop_with_launcher)
    try:
        web.run_app(
            app,
            host=config.listen.host,
            port=config.listen.port,
            print=None,
            access_log=None,
            shutdown_timeout=10,
            handle_signals=True,
        )
    except DamagedState as e:
        print(f"rustci-coordinator: {e}", file=sys.stderr)
        return EXIT_DAMAGED_STATE
    log.info("coordinator stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
