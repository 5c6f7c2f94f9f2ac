"""``rustci-coordinator``: load the config, set up logging, serve until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import structlog
from aiohttp import web

from coordinator import config as config_module
from coordinator.app import make_app
from shared import logs
from shared.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rustci-coordinator", description="RustCI Runner coordinator")
    parser.add_argument("-c", "--config", type=Path, default=os.environ.get("RUSTCI_CONFIG"), help="YAML config file")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config)
    except ConfigError as e:
        print(f"rustci-coordinator: {e}", file=sys.stderr)
        return 2
    logs.configure(config.log.level, config.log.format)  # type: ignore[arg-type]
    log = structlog.get_logger("coordinator")
    app = make_app(config)

    async def announce(_: web.Application) -> None:
        log.info(
            "coordinator listening",
            url=f"http://{config.listen.host}:{config.listen.port}/api",
            database=str(config.database_path),
        )

    app.on_startup.append(announce)
    web.run_app(
        app,
        host=config.listen.host,
        port=config.listen.port,
        print=None,
        access_log=None,
        shutdown_timeout=10,
        handle_signals=True,
    )
    log.info("coordinator stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
