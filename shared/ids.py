"""Identifiers in the formats the API promises: ``runner_<uuid4>``, ``job_<uuid4>``."""

from __future__ import annotations

import re
import secrets
import uuid

RUNNER_PREFIX = "runner_"
JOB_PREFIX = "job_"
TOKEN_PREFIX = "reg_token_"

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
RUNNER_ID_RE = re.compile(rf"^{RUNNER_PREFIX}{_UUID}\Z")  # \Z: "$" would also match before a final newline
JOB_ID_RE = re.compile(rf"^{JOB_PREFIX}{_UUID}\Z")


def new_runner_id() -> str:
    return f"{RUNNER_PREFIX}{uuid.uuid4()}"


def new_job_id() -> str:
    return f"{JOB_PREFIX}{uuid.uuid4()}"


def new_runner_token() -> str:
    return f"{TOKEN_PREFIX}{secrets.token_urlsafe(32)}"


def new_api_key() -> str:
    return f"rk_{secrets.token_urlsafe(32)}"
