"""``rustci jobs ...`` and ``rustci logs``: submitting jobs, following them to their end, reading logs.

A job goes to one runner (``--runner``) or to the fleet (``--tag``, repeatable: any runner with all the tags
takes it). Where only a job id is given (``jobs get|cancel JOB``, ``logs --job JOB``) the CLI finds its runner
with :meth:`RustCIClient.find_job` (``GET /api/jobs/{id}``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from rustci.cli import output
from rustci.cli.connection import resolve
from rustci.cli.errors import FAILED, JOB_CANCELLED, JOB_TIMED_OUT, OK, USAGE, CliError
from rustci.cli.output import Column
from rustci.client import RustCIClient
from shared.models import TERMINAL_JOB_STATUSES

JOB_COLUMNS = (
    Column("JOB ID", "job_id"),
    Column("NAME", "name"),
    Column("STATUS", "status"),
    Column("EXIT", "exit_code"),
    Column("CREATED", "created_at"),
    Column("DURATION", "duration"),
)
STEP_COLUMNS = (Column("STEP", "name"), Column("STATUS", "status"), Column("EXIT", "exit_code"))


def exit_code_of(job: dict[str, Any]) -> int:
    """The job's outcome as an exit status: 0 completed, the failing step's code, 124 timed out, 130 cancelled."""
    status = job.get("status")
    if status == "completed":
        return OK
    if status == "timed_out":
        return JOB_TIMED_OUT
    if status == "cancelled":
        return JOB_CANCELLED
    code = job.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else FAILED


def read_job_file(name: str) -> dict[str, Any]:
    """The job body from a YAML or JSON file (JSON is YAML), or from stdin for ``-``."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot read job file {name}: {e.strerror or e}") from e
    try:
        job = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise CliError(f"job file {name} is not valid YAML or JSON{at}") from e
    if not isinstance(job, dict):
        raise CliError(f"job file {name} must hold one job (a mapping with 'name' and 'steps')")
    return job


def pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` arguments in order, the value taken as text."""
    found = []
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip():
            raise CliError(f"{what} must look like NAME=VALUE, got {value!r}")
        found.append((key.strip(), rest))
    return found


def _job_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    job: dict[str, Any] = read_job_file(args.file) if args.file else {}
    if args.name:
        job["name"] = args.name
    if args.step:
        job["steps"] = [{"name": name, "run": run} for name, run in pairs(args.step, "--step")]
    if args.env:
        job["environment"] = {**job.get("environment", {}), **dict(pairs(args.env, "--env"))}
    if args.timeout is not None:
        job["timeout"] = args.timeout
    if args.retry_count is not None:
        job["retry_count"] = args.retry_count
    if "name" not in job or "steps" not in job:
        raise CliError("a job needs a name and steps: -f job.yaml, or --name and --step NAME=CMD")
    return job


def follow_job(client: RustCIClient, runner_id: str, job_id: str, timeout: float) -> dict[str, Any]:
    """Print the job's log lines to stdout as they arrive (steps announced on stderr) until it ends."""
    deadline = time.monotonic() + timeout
    last_seq, step = 0, None
    while True:
        try:
            for entry in client.follow_runner_logs(runner_id, job_id=job_id, after_seq=last_seq, idle_timeout=60):
                last_seq = max(last_seq, int(entry.get("seq", 0)))
                context = entry.get("context") or {}
                if context.get("step") and context["step"] != step:
                    step = context["step"]
                    print(f"--- step {step}", file=sys.stderr, flush=True)
                if context.get("stream") in ("stdout", "stderr"):
                    print(entry.get("message", ""), flush=True)
                else:
                    print(f"--- {entry.get('message', '')}", file=sys.stderr, flush=True)
                if time.monotonic() > deadline:
                    break
        except requests.ConnectionError:
            pass  # the stream broke off (idle, coordinator restarted): pick up after the last line seen
        job = client.get_job(runner_id, job_id)
        if job.get("status") in TERMINAL_JOB_STATUSES:
            return job
        if time.monotonic() > deadline:
            raise CliError(f"job {job_id} is still {job.get('status')} after {timeout:g}s", FAILED)


def _assigned_runner(client: RustCIClient, job_id: str, timeout: float) -> str:
    """The runner a job submitted to the fleet was given to, once it has one (held jobs wait for a runner)."""
    deadline = time.monotonic() + timeout
    interval = 0.05
    while True:
        job = client.find_job(job_id)
        if job.get("runner_id"):
            return str(job["runner_id"])
        if job.get("status") in TERMINAL_JOB_STATUSES:
            raise CliError(f"job {job_id} ended {job.get('status')} before a runner took it", FAILED)
        if time.monotonic() > deadline:
            raise CliError(f"job {job_id} found no runner within {timeout:g}s", FAILED)
        time.sleep(interval)
        interval = min(interval * 2, 1.0)


def jobs_submit(args: argparse.Namespace) -> int:
    job = _job_from_flags(args)
    if args.runner and args.tag:
        raise CliError("give --runner or --tag, not both", USAGE)
    with resolve(args).client() as client:
        if args.runner:
            submitted = client.submit_job(args.runner, job)
        else:
            submitted = client.submit_job(job=job, tags=args.tag or [])
        where = submitted.get("runner_id") or args.runner or "the fleet (held until a runner qualifies)"
        if not args.wait:
            return output.show(args.output, submitted, f"job {submitted['job_id']} {submitted['status']} on {where}")
        print(f"--- job {submitted['job_id']} submitted to {where}", file=sys.stderr, flush=True)
        runner_id = args.runner or _assigned_runner(client, submitted["job_id"], args.wait_timeout)
        final = follow_job(client, runner_id, submitted["job_id"], args.wait_timeout)
    code = exit_code_of(final)
    detail = f", exit code {final.get('exit_code')}" if final.get("exit_code") is not None else ""
    print(f"--- job {final['job_id']} {final['status']}{detail}", file=sys.stderr, flush=True)
    if args.output != "table":
        output.emit(final, args.output, "")
    return code


def jobs_list(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        page = client.list_jobs(args.runner, args.status, args.limit, args.offset)
    return output.show(args.output, page, output.table(page["jobs"], JOB_COLUMNS))


def _locate(client: RustCIClient, args: argparse.Namespace, job_id: str) -> dict[str, Any]:
    if args.runner:
        return client.get_job(args.runner, job_id)
    return client.find_job(job_id)


def jobs_get(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        job = _locate(client, args, args.job_id)
    human = output.fields(job, skip=("steps", "attempts")) + "\n\n" + output.table(job.get("steps", []), STEP_COLUMNS)
    return output.show(args.output, job, human)


def jobs_cancel(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        job = _locate(client, args, args.job_id)
        answer = client.cancel_job(job["runner_id"], args.job_id)
    return output.show(args.output, answer, f"job {args.job_id}: {answer.get('status')} ({answer.get('message')})")


def _print_entry(entry: dict[str, Any]) -> None:
    context = entry.get("context") or {}
    where = "/".join(str(context[k]) for k in ("job_id", "step") if context.get(k))
    print(
        f"{entry.get('timestamp')} {entry.get('level', '').upper():5} {where + ' ' if where else ''}"
        f"{entry.get('message', '')}",
        flush=True,
    )


def logs(args: argparse.Namespace) -> int:
    with resolve(args).client() as client:
        runner_id = args.runner_id
        if runner_id is None:
            if not args.job:
                raise CliError("logs needs a RUNNER, or --job JOB")
            runner_id = client.find_job(args.job)["runner_id"]
        if args.follow:
            # Following one job ends after its last line once it is over; a whole runner's log until Ctrl-C.
            for entry in client.follow_runner_logs(
                runner_id, since=args.since, level=args.level, job_id=args.job, step=args.step
            ):
                if args.output == "table":
                    _print_entry(entry)
                else:
                    output.emit(entry, "json", "")
            return OK
        page = client.get_runner_logs(
            runner_id, since=args.since, level=args.level, limit=args.limit, job_id=args.job, step=args.step
        )
    if args.output != "table":
        return output.show(args.output, page, "")
    for entry in page["logs"]:
        _print_entry(entry)
    return OK


def add_parsers(groups: Any, common: argparse.ArgumentParser) -> None:
    jobs = groups.add_parser("jobs", help="jobs: submit, list, get, cancel")
    cmds = jobs.add_subparsers(dest="command", required=True, metavar="COMMAND")
    submit = cmds.add_parser("submit", parents=[common], help="submit a job (from a file, or --name and --step)")
    submit.add_argument("--runner", metavar="RUNNER", help="the runner to run it (else routed by --tag)")
    submit.add_argument(
        "--tag", action="append", metavar="T", help="route to any runner with all these tags; repeatable"
    )
    submit.add_argument("-f", "--file", metavar="FILE", help="the job body as YAML or JSON; - reads stdin")
    submit.add_argument("--name", help="the job's name (overrides the file's)")
    submit.add_argument("--step", action="append", metavar="NAME=CMD", help="a step; repeat, in order")
    submit.add_argument("--env", action="append", metavar="K=V", help="job environment; repeatable")
    submit.add_argument("--timeout", type=int, help="job timeout in seconds")
    submit.add_argument("--retry-count", type=int)
    submit.add_argument(
        "--wait",
        action="store_true",
        help="stream the job's output and exit with its code (0 completed, the failing step's code,"
        " 124 timed out, 130 cancelled)",
    )
    submit.add_argument("--wait-timeout", type=float, default=24 * 3600.0, help="seconds --wait waits at most")
    submit.set_defaults(handler=jobs_submit)
    listing = cmds.add_parser("list", parents=[common], help="a runner's jobs, newest first")
    listing.add_argument("--runner", required=True, metavar="RUNNER")
    listing.add_argument("--status")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--offset", type=int)
    listing.set_defaults(handler=jobs_list)
    for name, handler, text in (("get", jobs_get, "one job with its steps"), ("cancel", jobs_cancel, "cancel a job")):
        cmd = cmds.add_parser(name, parents=[common], help=text)
        cmd.add_argument("job_id", metavar="JOB")
        cmd.add_argument("--runner", metavar="RUNNER", help="the job's runner (default: found by the job id)")
        cmd.set_defaults(handler=handler)

    log_cmd = groups.add_parser("logs", parents=[common], help="a runner's log, or one job's; -f follows it")
    log_cmd.add_argument("runner_id", metavar="RUNNER", nargs="?", help="the runner (optional with --job)")
    log_cmd.add_argument("--job", metavar="JOB", help="only this job's lines (with -f: until the job ends)")
    log_cmd.add_argument("--step", help="only this step's lines")
    log_cmd.add_argument("--level", choices=("debug", "info", "warn", "error"), help="lowest level shown")
    log_cmd.add_argument("--since", help="ISO 8601 time")
    log_cmd.add_argument("--limit", type=int, help="entries in the page (without -f)")
    log_cmd.add_argument("-f", "--follow", action="store_true", help="keep printing entries as they arrive")
    log_cmd.set_defaults(handler=logs)
