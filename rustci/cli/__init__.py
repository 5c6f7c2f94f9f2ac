"""``rustci``: the command line for the coordinator's API (kubectl-like), and ``rustci local up`` for development.

    rustci runners list|get|update|delete|stop|start|restart ...
    rustci jobs submit -f job.yaml --runner RUNNER [--wait]      (or --name NAME --step NAME=CMD ...)
    rustci jobs list --runner RUNNER | jobs get JOB | jobs cancel JOB
    rustci logs RUNNER [--job JOB] [-f]                          (or: rustci logs --job JOB)
    rustci config get|set RUNNER [KEY=VALUE ...]
    rustci bulk OPERATION (--status S | --type T | --tags a,b | --all) [--data KEY=VALUE ...]
    rustci version | completion bash|zsh | local up

Answers are tables by default, ``-o json`` or ``-o yaml`` for scripts. The coordinator and credential come
from flags, ``RUSTCI_URL``/``RUSTCI_API_KEY``/``RUSTCI_TOKEN``/``RUSTCI_CA_FILE``, or the config file (see
:mod:`rustci.cli.connection`). Every error is one line on stderr (``rustci: CODE: message`` with the API's
code where there is one) and a non-zero exit status (:mod:`rustci.cli.errors`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import requests

from rustci.cli import completion, jobs, output, runners
from rustci.cli.connection import resolve
from rustci.cli.errors import FAILED, OK, CliError
from rustci.client import DEFAULT_URL
from shared.errors import ApiError
from shared.version import version


def cmd_local_up(args: argparse.Namespace) -> int:
    from rustci import local  # the daemons' settings are only needed here

    options = local.Options(
        port=args.port,
        agent_port=args.agent_port,
        state_dir=args.state_dir,
        host=args.host,
        startup_timeout=args.startup_timeout,
    )
    return asyncio.run(local.up(options))


def cmd_version(args: argparse.Namespace) -> int:
    info = {"client": version(), "coordinator_url": None, "coordinator": None}
    if not args.client:
        connection = resolve(args)
        info["coordinator_url"] = connection.url
        with connection.client() as client:
            health = client.health()
        info["coordinator"] = str(health.get("version") or health.get("status"))
    human = f"rustci {info['client']}"
    if info["coordinator"]:
        human += f"\ncoordinator {info['coordinator_url']}: {info['coordinator']}"
    output.emit(info, args.output, human)
    return OK


def cmd_completion(args: argparse.Namespace) -> int:
    print(completion.script(build_parser(), args.shell), end="")
    return OK


def _connection_options() -> argparse.ArgumentParser:
    """Options every API command takes, before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="coordinator base URL (default: $RUSTCI_URL)")
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="admin API key (default: $RUSTCI_API_KEY)")
    common.add_argument(
        "--token", default=argparse.SUPPRESS, help="bearer JWT instead of a key (default: $RUSTCI_TOKEN)"
    )
    common.add_argument(
        "--ca-file", default=argparse.SUPPRESS, help="PEM CA bundle for an https URL (default: $RUSTCI_CA_FILE)"
    )
    common.add_argument(
        "--insecure-skip-tls-verify", action="store_true", default=argparse.SUPPRESS, help="do not verify TLS"
    )
    common.add_argument(
        "-o", "--output", choices=output.FORMATS, default=argparse.SUPPRESS, help="table (default), json, yaml"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _connection_options()
    parser = argparse.ArgumentParser(
        prog="rustci", description="RustCI Runner command line", parents=[common], epilog=f"default URL: {DEFAULT_URL}"
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    runners.add_parsers(groups, common)
    jobs.add_parsers(groups, common)

    version_cmd = groups.add_parser("version", parents=[common], help="this CLI's version and the coordinator's")
    version_cmd.add_argument("--client", action="store_true", help="only this CLI's version (no request)")
    version_cmd.set_defaults(handler=cmd_version)
    complete = groups.add_parser("completion", help="print a shell completion script: source <(rustci completion bash)")
    complete.add_argument("shell", choices=completion.SHELLS)
    complete.set_defaults(handler=cmd_completion)

    local = groups.add_parser("local", help="a coordinator and an agent on this machine, for development")
    local_cmds = local.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = local_cmds.add_parser("up", help="start both in the foreground; Ctrl-C stops them")
    up.add_argument("--port", type=int, help="coordinator API port (default: from configs/coordinator.yaml)")
    up.add_argument("--agent-port", type=int, help="agent API port (default: from configs/agent.yaml)")
    up.add_argument("--state-dir", type=Path, help="state root: <dir>/coordinator and <dir>/agent (default: .rustci)")
    up.add_argument("--host", help="interface the coordinator binds (default: from configs/coordinator.yaml)")
    up.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for each to be ready")
    up.set_defaults(handler=cmd_local_up)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "output"):
        args.output = "table"
    try:
        code: int = args.handler(args)
        return code
    except CliError as e:
        print(f"rustci: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except ApiError as e:
        print(f"rustci: {e.code}: {_one_line(e.message)}", file=sys.stderr)
        return FAILED
    except requests.exceptions.SSLError as e:
        reason = _one_line(str(e.args[0] if e.args else e))
        print(f"rustci: TLS verification of the coordinator failed ({reason[-200:]})", file=sys.stderr)
        return FAILED
    except requests.ConnectionError:
        url = getattr(args, "url", None) or "the coordinator"
        print(f"rustci: cannot reach the coordinator at {resolve_url(args) or url}", file=sys.stderr)
        return FAILED
    except requests.Timeout:
        print("rustci: the coordinator did not answer in time", file=sys.stderr)
        return FAILED
    except requests.RequestException as e:
        print(f"rustci: request failed: {_one_line(str(e))}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return 130


def resolve_url(args: argparse.Namespace) -> str | None:
    try:
        return resolve(args).url
    except CliError:
        return None


__all__ = ["build_parser", "main"]
