"""``rustci``: the command line for the coordinator's API, and ``rustci local up`` for development.

    rustci local up [--port 8080] [--agent-port 8081] [--state-dir .rustci] [--host 127.0.0.1]
    rustci runners list [--status active] [--type native] [--tags a,b] [--limit N] [--offset N]
    rustci runners get RUNNER_ID
    rustci runners delete RUNNER_ID [--force]
    rustci jobs submit --runner RUNNER_ID --name NAME --step NAME=CMD [--step ...] [--env K=V ...] [--wait]
    rustci jobs list --runner RUNNER_ID [--status completed]
    rustci jobs get --runner RUNNER_ID JOB_ID

The coordinator is ``$RUSTCI_URL`` (default http://localhost:8080) or ``--url``. The credential is ``--token`` or
``$RUSTCI_TOKEN`` (a JWT from ``rustci-coordinator token``), else the API key: ``--api-key``, else
``$RUSTCI_API_KEY``, else the one ``rustci local up`` keeps in ``.rustci/coordinator/admin-api-key``.
Answers are printed as JSON; errors go to stderr with the API's error code, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from rustci.client import DEFAULT_URL, JobWaitTimeout, RustCIClient
from shared.errors import ApiError

LOCAL_API_KEY_FILE = Path(".rustci/coordinator/admin-api-key")

Command = Callable[[argparse.Namespace], int]


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _api_key(args: argparse.Namespace) -> str | None:
    key: str | None = getattr(args, "api_key", None) or os.environ.get("RUSTCI_API_KEY")
    if not key and LOCAL_API_KEY_FILE.is_file():
        key = LOCAL_API_KEY_FILE.read_text(encoding="utf-8").strip()
    return key or None


def _client(args: argparse.Namespace) -> RustCIClient:
    url = getattr(args, "url", None) or os.environ.get("RUSTCI_URL") or DEFAULT_URL
    token = getattr(args, "token", None) or os.environ.get("RUSTCI_TOKEN")
    if token:
        return RustCIClient(url, token=token)
    return RustCIClient(url, _api_key(args))


def _pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"rustci: {what} must look like NAME=VALUE, got {value!r}")
        pairs.append((key.strip(), rest))
    return pairs


# --- commands ----------------------------------------------------------------------------------------------


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


def cmd_runners_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.list_runners(args.status, args.type, args.tags, args.limit, args.offset))
    return 0


def cmd_runners_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.get_runner(args.runner_id))
    return 0


def cmd_runners_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.delete_runner(args.runner_id, force=args.force))
    return 0


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    job: dict[str, Any] = {
        "name": args.name,
        "steps": [{"name": name, "run": command} for name, command in _pairs(args.step, "--step")],
    }
    if args.env:
        job["environment"] = dict(_pairs(args.env, "--env"))
    if args.timeout is not None:
        job["timeout"] = args.timeout
    if args.retry_count is not None:
        job["retry_count"] = args.retry_count
    with _client(args) as client:
        submitted = client.submit_job(args.runner, job)
        if not args.wait:
            _print_json(submitted)
            return 0
        try:
            final = client.wait_for_job(args.runner, submitted["job_id"], timeout=args.wait_timeout)
        except JobWaitTimeout as e:
            _print_json(e.job)
            print(f"rustci: {e}", file=sys.stderr)
            return 1
        _print_json(final)
        return 0 if final.get("status") == "completed" else 1


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.list_jobs(args.runner, args.status, args.limit, args.offset))
    return 0


def cmd_jobs_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.get_job(args.runner, args.job_id))
    return 0


# --- parser ------------------------------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    """``--url`` and ``--api-key``, accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="coordinator base URL (default: $RUSTCI_URL)")
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="admin API key (default: $RUSTCI_API_KEY)")
    common.add_argument(
        "--token", default=argparse.SUPPRESS, help="bearer JWT instead of a key (default: $RUSTCI_TOKEN)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _connection_options()
    parser = argparse.ArgumentParser(
        prog="rustci", description="RustCI Runner command line", parents=[common], epilog=f"default URL: {DEFAULT_URL}"
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="{local,runners,jobs}")

    local = groups.add_parser("local", help="a coordinator and an agent on this machine, for development")
    local_cmds = local.add_subparsers(dest="command", required=True)
    up = local_cmds.add_parser("up", help="start both in the foreground; Ctrl-C stops them")
    up.add_argument("--port", type=int, help="coordinator API port (default: from configs/coordinator.yaml)")
    up.add_argument("--agent-port", type=int, help="agent API port (default: from configs/agent.yaml)")
    up.add_argument("--state-dir", type=Path, help="state root: <dir>/coordinator and <dir>/agent (default: .rustci)")
    up.add_argument("--host", help="interface the coordinator binds (default: from configs/coordinator.yaml)")
    up.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for each to be ready")
    up.set_defaults(handler=cmd_local_up)

    runners = groups.add_parser("runners", help="the runner registry")
    runner_cmds = runners.add_subparsers(dest="command", required=True)
    listing = runner_cmds.add_parser("list", parents=[common], help="list runners")
    listing.add_argument("--status", help="active, inactive, error, ...")
    listing.add_argument("--type", help="native, docker, kubernetes, local")
    listing.add_argument("--tags", help="comma-separated; runners having all of them")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--offset", type=int)
    listing.set_defaults(handler=cmd_runners_list)
    get = runner_cmds.add_parser("get", parents=[common], help="one runner, with its statistics")
    get.add_argument("runner_id")
    get.set_defaults(handler=cmd_runners_get)
    delete = runner_cmds.add_parser("delete", parents=[common], help="unregister a runner")
    delete.add_argument("runner_id")
    delete.add_argument("--force", action="store_true", help="even with queued or running jobs (they are cancelled)")
    delete.set_defaults(handler=cmd_runners_delete)

    jobs = groups.add_parser("jobs", help="jobs on a runner")
    job_cmds = jobs.add_subparsers(dest="command", required=True)
    submit = job_cmds.add_parser("submit", parents=[common], help="submit a job to a runner")
    submit.add_argument("--runner", required=True, metavar="RUNNER_ID")
    submit.add_argument("--name", required=True)
    submit.add_argument("--step", action="append", required=True, metavar="NAME=CMD", help="a step; repeat, in order")
    submit.add_argument("--env", action="append", default=[], metavar="K=V", help="job environment; repeatable")
    submit.add_argument("--timeout", type=int, help="job timeout in seconds")
    submit.add_argument("--retry-count", type=int)
    submit.add_argument("--wait", action="store_true", help="wait for the outcome; exit 1 unless it completed")
    submit.add_argument("--wait-timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)")
    submit.set_defaults(handler=cmd_jobs_submit)
    job_list = job_cmds.add_parser("list", parents=[common], help="a runner's jobs, newest first")
    job_list.add_argument("--runner", required=True, metavar="RUNNER_ID")
    job_list.add_argument("--status")
    job_list.add_argument("--limit", type=int)
    job_list.add_argument("--offset", type=int)
    job_list.set_defaults(handler=cmd_jobs_list)
    job_get = job_cmds.add_parser("get", parents=[common], help="one job with its steps")
    job_get.add_argument("--runner", required=True, metavar="RUNNER_ID")
    job_get.add_argument("job_id")
    job_get.set_defaults(handler=cmd_jobs_get)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    try:
        return handler(args)
    except ApiError as e:
        print(f"rustci: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except requests.RequestException as e:
        print(f"rustci: cannot reach the coordinator: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
