"""``rustci runners ...``, ``rustci config ...`` and ``rustci bulk``: the registry and runner control."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from rustci.cli import output
from rustci.cli.connection import resolve
from rustci.cli.errors import OK, CliError
from rustci.cli.output import Column

RUNNER_COLUMNS = (
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("TYPE", "type"),
    Column("STATUS", "status"),
    Column("ACTIVE", "current_load.active_jobs"),
    Column("QUEUED", "current_load.queued_jobs"),
    Column("TAGS", "tags"),
    Column("HOST", "host"),
)
HEALTH_COLUMNS = (Column("CHECK", "check"), Column("STATUS", "status"), Column("ERROR", "error"))
BULK_COLUMNS = (Column("RUNNER", "runner_id"), Column("SUCCESS", "success"), Column("ERROR", "error.code"))


def parse_value(text: str) -> Any:
    """A ``KEY=VALUE`` value as YAML reads a scalar or a flow collection: ``4``, ``true``, ``[a, b]``, ``text``."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def assignments(values: list[str], what: str) -> dict[str, Any]:
    """``KEY=VALUE`` arguments as a nested mapping (``resource_limits.cpu=2`` sets one nested key)."""
    tree: dict[str, Any] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip():
            raise CliError(f"{what} must look like KEY=VALUE, got {value!r}")
        *parents, leaf = key.strip().split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CliError(f"{what}: {key} sets a key below a value")
        node[leaf] = parse_value(rest)
    return tree


def runners_list(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        page = client.list_runners(args.status, args.type, args.tags, args.limit, args.offset)
    human = output.table(page["runners"], RUNNER_COLUMNS)
    if page.get("has_more"):
        human += f"\n({len(page['runners'])} of {page['total_count']}; --offset for more)"
    return output.show(args.output, page, human)


def runners_get(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        runner = client.get_runner(args.runner_id)
    return output.show(args.output, runner, output.fields(runner))


def runners_status(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        view = client.get_runner_status(args.runner_id)
    return output.show(args.output, view, output.fields(view))


def runners_health(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        view = client.get_runner_health(args.runner_id)
    checks = [{"check": name, **check} for name, check in view.get("checks", {}).items()]
    human = f"HEALTH   {view.get('health')}\n\n" + output.table(checks, HEALTH_COLUMNS)
    return output.show(args.output, view, human)


def runners_update(args: argparse.Namespace) -> int:
    update: dict[str, Any] = {}
    if args.name:
        update["name"] = args.name
    if args.tags is not None:
        update["tags"] = [t for t in args.tags.split(",") if t]
    if args.capabilities is not None:
        update["capabilities"] = [c for c in args.capabilities.split(",") if c]
    if args.metadata:
        update["metadata"] = assignments(args.metadata, "--metadata")
    if not update:
        raise CliError("nothing to update: give --name, --tags, --capabilities or --metadata")
    with resolve(args).client() as client:
        client.update_runner(args.runner_id, update)
        runner = client.get_runner(args.runner_id)
    return output.show(args.output, runner, output.fields(runner))


def runners_delete(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        answer = client.delete_runner(args.runner_id, force=args.force)
    return output.show(args.output, answer, f"runner {args.runner_id} deleted")


def runners_stop(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        answer = client.stop_runner(args.runner_id, graceful=not args.now, timeout=args.timeout, reason=args.reason)
    return output.show(
        args.output, answer, f"runner {args.runner_id}: {answer.get('status')} ({answer.get('message')})"
    )


def runners_start(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        answer = client.start_runner(args.runner_id)
    return output.show(
        args.output, answer, f"runner {args.runner_id}: {answer.get('status')} ({answer.get('message')})"
    )


def runners_restart(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        answer = client.restart_runner(args.runner_id, graceful=not args.now, timeout=args.timeout)
    return output.show(
        args.output, answer, f"runner {args.runner_id}: {answer.get('status')} ({answer.get('message')})"
    )


def config_get(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        answer = client.get_runner_config(args.runner_id)
    configuration = answer.get("configuration", {})
    human = output.fields(configuration)
    if args.keys:
        values = [output.lookup(configuration, key) for key in args.keys]
        missing = [key for key, value in zip(args.keys, values, strict=True) if value is None]
        if missing:
            raise CliError(f"no setting {missing[0]!r} in the runner's configuration")
        human = "\n".join(output.cell(value) for value in values)
    return output.show(args.output, answer, human)


def config_set(args: argparse.Namespace) -> int:
    if not args.assignments:
        raise CliError("config set needs at least one KEY=VALUE")
    changes = assignments(args.assignments, "config set")
    with resolve(args).client() as client:
        answer = client.update_runner_config(args.runner_id, changes)
    human = answer.get("message", "updated")
    if answer.get("restart_required"):
        human += f" (restart needed for: {', '.join(answer.get('restart_required_fields', []))})"
    return output.show(args.output, answer, human)


def bulk(args: argparse.Namespace) -> int:
    filters: dict[str, Any] = {}
    if args.status:
        filters["status"] = args.status
    if args.type:
        filters["type"] = args.type
    if args.tags:
        filters["tags"] = [t for t in args.tags.split(",") if t]
    if not filters and not args.all:
        raise CliError("bulk needs a filter (--status, --type, --tags) or --all for every runner")
    data = assignments(args.data, "--data") if args.data else None
    with resolve(args).client() as client:
        answer = client.bulk(args.operation, filters, data)
    human = output.table(answer.get("results", []), BULK_COLUMNS)
    human += f"\n{answer.get('affected_runners', 0)} runner(s) affected"
    output.emit(answer, args.output, human)
    return OK if answer.get("success") else 1


def add_parsers(groups: Any, common: argparse.ArgumentParser) -> None:
    runners = groups.add_parser("runners", help="the runner registry and runner control")
    cmds = runners.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = cmds.add_parser("list", parents=[common], help="list runners (a table; -o json for scripts)")
    listing.add_argument("--status", help="active, inactive, error, stopped, ...")
    listing.add_argument("--type", help="native, docker, kubernetes, local")
    listing.add_argument("--tags", help="comma-separated; runners having all of them")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--offset", type=int)
    listing.set_defaults(handler=runners_list)
    get = cmds.add_parser("get", parents=[common], help="one runner, with its statistics")
    get.add_argument("runner_id", metavar="RUNNER")
    get.set_defaults(handler=runners_get)
    for name, handler, text in (
        ("status", runners_status, "live status and load, asked of the agent (held jobs counted as queued)"),
        ("health", runners_health, "the agent's health checks"),
    ):
        cmd = cmds.add_parser(name, parents=[common], help=text)
        cmd.add_argument("runner_id", metavar="RUNNER")
        cmd.set_defaults(handler=handler)
    update = cmds.add_parser("update", parents=[common], help="change a runner's name, tags, capabilities, metadata")
    update.add_argument("runner_id", metavar="RUNNER")
    update.add_argument("--name")
    update.add_argument("--tags", help="comma-separated; replaces the runner's tags")
    update.add_argument("--capabilities", help="comma-separated; replaces them")
    update.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="merged key by key; repeatable")
    update.set_defaults(handler=runners_update)
    delete = cmds.add_parser("delete", parents=[common], help="unregister a runner")
    delete.add_argument("runner_id", metavar="RUNNER")
    delete.add_argument("--force", action="store_true", help="even with queued or running jobs (they are cancelled)")
    delete.set_defaults(handler=runners_delete)
    for name, handler, text in (
        ("stop", runners_stop, "stop taking jobs (running ones finish within --timeout)"),
        ("restart", runners_restart, "stop, reload the agent's config file, start"),
    ):
        cmd = cmds.add_parser(name, parents=[common], help=text)
        cmd.add_argument("runner_id", metavar="RUNNER")
        cmd.add_argument("--now", action="store_true", help="cancel running jobs instead of letting them finish")
        cmd.add_argument("--timeout", type=float, help="seconds running jobs get before they are cancelled")
        if name == "stop":
            cmd.add_argument("--reason")
        cmd.set_defaults(handler=handler)
    start = cmds.add_parser("start", parents=[common], help="take jobs again (held jobs are delivered)")
    start.add_argument("runner_id", metavar="RUNNER")
    start.set_defaults(handler=runners_start)

    config = groups.add_parser("config", help="a runner's live configuration")
    config_cmds = config.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cget = config_cmds.add_parser("get", parents=[common], help="the configuration, or the values of KEYs")
    cget.add_argument("runner_id", metavar="RUNNER")
    cget.add_argument("keys", nargs="*", metavar="KEY", help="e.g. max_concurrent_jobs resource_limits.cpu")
    cget.set_defaults(handler=config_get)
    cset = config_cmds.add_parser("set", parents=[common], help="change settings: KEY=VALUE ...")
    cset.add_argument("runner_id", metavar="RUNNER")
    cset.add_argument("assignments", nargs="*", metavar="KEY=VALUE", help="e.g. max_concurrent_jobs=4")
    cset.set_defaults(handler=config_set)

    bulk_cmd = groups.add_parser("bulk", parents=[common], help="one operation on every runner matching filters")
    bulk_cmd.add_argument("operation", choices=("update_config", "start", "stop", "restart", "delete"))
    bulk_cmd.add_argument("--status")
    bulk_cmd.add_argument("--type")
    bulk_cmd.add_argument("--tags", help="comma-separated")
    bulk_cmd.add_argument("--all", action="store_true", help="every runner (no filter)")
    bulk_cmd.add_argument("--data", action="append", metavar="KEY=VALUE", help="the operation's data; repeatable")
    bulk_cmd.set_defaults(handler=bulk)
