"""``RustCIClient``: a synchronous Python client for the coordinator's public API.

One ``requests.Session`` per client, so calls reuse keep-alive connections. Every method returns the parsed
JSON answer as a dict, like the API reference's SDK example. An error answer raises the typed exception from
:mod:`shared.errors` (``RunnerNotFound``, ``InvalidRequest``, ...), rebuilt from the error envelope. Bodies
that have a wire model are validated before they are sent, so a mistake raises ``InvalidRequest`` naming the
field without a round trip. Network failures raise ``requests.RequestException``.

    client = RustCIClient("http://localhost:8080", api_key="rk_...")
    runner = client.register_runner({"name": "r1", "type": "native", "host": "localhost", "port": 8081})
    job = client.submit_job(runner["runner_id"], {"name": "hello", "steps": [{"name": "greet", "run": "echo hi"}]})
    print(client.wait_for_job(runner["runner_id"], job["job_id"], timeout=60)["status"])
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from pydantic import BaseModel, ValidationError

from shared.errors import InternalError, InvalidRequest, from_envelope
from shared.models import (
    TERMINAL_JOB_STATUSES,
    BulkRequest,
    FleetJobSubmission,
    JobSubmission,
    RestartRequest,
    RunnerConfigUpdate,
    RunnerRegistration,
    RunnerUpdate,
    StopRequest,
)

M = TypeVar("M", bound=BaseModel)
Body = Mapping[str, Any] | BaseModel

DEFAULT_URL = "http://localhost:8080"


class TLSVerificationError(requests.exceptions.SSLError):
    """The coordinator's certificate did not verify against the configured CA or the system store."""


class JobWaitTimeout(TimeoutError):
    """``wait_for_job`` reached its deadline; ``job`` is the last state seen."""

    def __init__(self, message: str, job: dict[str, Any]) -> None:
        super().__init__(message)
        self.job = job


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _validated(model: type[M], body: Body) -> dict[str, Any]:
    """The body as the server will read it, or ``InvalidRequest`` naming the first bad field."""
    try:
        parsed = body if isinstance(body, model) else model.model_validate(body)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        problems = [{"field": _field_path(tuple(err["loc"])), "message": err["msg"]} for err in errors[:20]]
        first = problems[0]
        message = "unknown field" if errors[0]["type"] == "extra_forbidden" else first["message"]
        raise InvalidRequest(
            f"Invalid {model.__name__}: {first['field']}: {message}", field=first["field"], errors=problems
        ) from e
    return parsed.model_dump(mode="json", exclude_unset=True)


def _log_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The ``log`` events of a Server-Sent Events stream, as parsed JSON (keep-alive comments are skipped)."""
    event, data = "", list[str]()
    for line in lines:
        if not line:
            if data and event in ("", "message", "log"):
                entry = json.loads("\n".join(data))
                if isinstance(entry, dict):
                    yield entry
            event, data = "", []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()


def _segment(value: str) -> str:
    return quote(value, safe="")


class RustCIClient:
    """A client for ``<base_url>/api``.

    Credentials: ``api_key`` is sent as ``X-API-Key``; ``token`` (a JWT from ``rustci-coordinator token``) as
    ``Authorization: Bearer``. ``timeout`` bounds each request, in seconds.

    TLS: an ``https://`` coordinator is verified against ``ca_file`` (default ``RUSTCI_CA_FILE`` from the
    environment) or the system's trust store; ``insecure_skip_tls_verify=True`` turns verification off. A
    certificate that does not verify raises :class:`TLSVerificationError` (a ``requests.exceptions.SSLError``).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        token: str | None = None,
        ca_file: str | None = None,
        insecure_skip_tls_verify: bool = False,
    ) -> None:
        base = base_url.rstrip("/")
        self.base_url = base.removesuffix("/api")
        self.api_url = f"{self.base_url}/api"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        self.ca_file = ca_file or os.environ.get("RUSTCI_CA_FILE") or None
        # Passed on every request: a session-level setting would lose to REQUESTS_CA_BUNDLE in the environment.
        self.verify: bool | str = False if insecure_skip_tls_verify else (self.ca_file or True)
        self.session.verify = self.verify
        if api_key:
            self.session.headers["X-API-Key"] = api_key
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RustCIClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # --- transport -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _explained_tls(self) -> Iterator[None]:
        try:
            yield
        except requests.exceptions.SSLError as e:
            trusted = f"the CA in {self.ca_file}" if self.ca_file else "the system's trust store"
            raise TLSVerificationError(
                f"TLS verification of {self.base_url} failed against {trusted}: {e}. Pass ca_file= (or set "
                "RUSTCI_CA_FILE) to the CA that signed the coordinator's certificate",
                request=e.request,
                response=e.response,
            ) from e

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``method`` on ``/api{path}``; the JSON answer, or the typed error it carries."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        with self._explained_tls():
            response = self.session.request(
                method,
                self.api_url + path,
                params=query,
                json=json_body,
                timeout=timeout or self.timeout,
                verify=self.verify,
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise from_envelope(response.status_code, body)
        if not isinstance(body, dict):
            raise InternalError(f"{method} {path} answered HTTP {response.status_code} without a JSON object")
        return body

    # --- coordinator ---------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The coordinator's liveness probe (needs no API key)."""
        return self.request("GET", "/health")

    # --- runners -------------------------------------------------------------------------------------------

    def register_runner(self, registration: Body) -> dict[str, Any]:
        return self.request("POST", "/runners/register", json_body=_validated(RunnerRegistration, registration))

    def list_runners(
        self,
        status: str | None = None,
        type: str | None = None,
        tags: Iterable[str] | str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        tag_list = tags if isinstance(tags, str) or tags is None else ",".join(tags)
        params = {"status": status, "type": type, "tags": tag_list, "limit": limit, "offset": offset}
        return self.request("GET", "/runners", params=params)

    def get_runner(self, runner_id: str) -> dict[str, Any]:
        return self.request("GET", f"/runners/{_segment(runner_id)}")

    def update_runner(self, runner_id: str, update: Body) -> dict[str, Any]:
        return self.request("PUT", f"/runners/{_segment(runner_id)}", json_body=_validated(RunnerUpdate, update))

    def delete_runner(self, runner_id: str, force: bool = False) -> dict[str, Any]:
        params = {"force": "true"} if force else None
        return self.request("DELETE", f"/runners/{_segment(runner_id)}", params=params)

    def get_runner_status(self, runner_id: str) -> dict[str, Any]:
        return self.request("GET", f"/runners/{_segment(runner_id)}/status")

    def get_runner_health(self, runner_id: str) -> dict[str, Any]:
        return self.request("GET", f"/runners/{_segment(runner_id)}/health")

    def get_runner_metrics(
        self, runner_id: str, period: str | None = None, resolution: str | None = None
    ) -> dict[str, Any]:
        params = {"period": period, "resolution": resolution}
        return self.request("GET", f"/runners/{_segment(runner_id)}/metrics", params=params)

    def get_runner_config(self, runner_id: str) -> dict[str, Any]:
        return self.request("GET", f"/runners/{_segment(runner_id)}/config")

    def update_runner_config(self, runner_id: str, config: Body) -> dict[str, Any]:
        body = _validated(RunnerConfigUpdate, config)
        return self.request("PUT", f"/runners/{_segment(runner_id)}/config", json_body=body)

    def start_runner(self, runner_id: str) -> dict[str, Any]:
        return self.request("POST", f"/runners/{_segment(runner_id)}/start")

    def stop_runner(
        self, runner_id: str, graceful: bool | None = None, timeout: float | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """Graceful (default) lets running jobs finish within ``timeout`` seconds, then cancels them."""
        options = {"graceful": graceful, "timeout": timeout, "reason": reason}
        body = _validated(StopRequest, {k: v for k, v in options.items() if v is not None})
        return self.request("POST", f"/runners/{_segment(runner_id)}/stop", json_body=body or None)

    def restart_runner(
        self, runner_id: str, graceful: bool | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        options = {"graceful": graceful, "timeout": timeout}
        body = _validated(RestartRequest, {k: v for k, v in options.items() if v is not None})
        return self.request("POST", f"/runners/{_segment(runner_id)}/restart", json_body=body or None)

    def get_runner_logs(
        self,
        runner_id: str,
        since: str | None = None,
        until: str | None = None,
        level: str | None = None,
        limit: int | None = None,
        job_id: str | None = None,
        step: str | None = None,
    ) -> dict[str, Any]:
        """One page of log entries; ``since``/``until`` are ISO 8601, ``level`` the lowest level shown."""
        params = {"since": since, "until": until, "level": level, "limit": limit, "job_id": job_id, "step": step}
        return self.request("GET", f"/runners/{_segment(runner_id)}/logs", params=params)

    def follow_runner_logs(
        self,
        runner_id: str,
        since: str | None = None,
        level: str | None = None,
        job_id: str | None = None,
        step: str | None = None,
        idle_timeout: float | None = None,
        after_seq: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Log entries as they are stored (``follow=true``, Server-Sent Events), until the server ends the stream.

        Blocks between entries; stop by breaking out of the loop (the connection is closed then). With
        ``idle_timeout``, a stream silent for that long (keep-alives count as traffic) raises
        ``requests.ConnectionError``; keep it above the coordinator's ``log_stream.keepalive_interval``.
        With ``after_seq`` the stream starts after that entry (``Last-Event-ID``; ``0``: from the first), not
        with the last page. Following one ``job_id``, the stream ends after the job's last line once it is over.
        """
        options = {"since": since, "level": level, "job_id": job_id, "step": step, "follow": "true"}
        headers = {"Accept": "text/event-stream"}
        if after_seq is not None:
            headers["Last-Event-ID"] = str(after_seq)
        with (
            self._explained_tls(),
            self.session.get(
                f"{self.api_url}/runners/{_segment(runner_id)}/logs",
                params={k: v for k, v in options.items() if v is not None},
                headers=headers,
                stream=True,
                timeout=(self.timeout, idle_timeout),
            ) as response,
        ):
            if response.status_code >= 400:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                raise from_envelope(response.status_code, body)
            yield from _log_events(response.iter_lines(decode_unicode=True))

    def bulk(self, operation: str, filters: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``operation`` (update_config, start, stop, restart, delete) on every runner matching ``filters``
        (``status``, ``type``, ``tags``); ``{}`` is every runner."""
        request: dict[str, Any] = {"operation": operation, "filters": dict(filters)}
        if data is not None:
            request["data"] = dict(data)
        return self.request("POST", "/runners/bulk", json_body=_validated(BulkRequest, request))

    # --- jobs ----------------------------------------------------------------------------------------------

    def submit_job(
        self,
        runner_id: str | None = None,
        job: Body | None = None,
        *,
        tags: Iterable[str] | None = None,
        type: str | None = None,
    ) -> dict[str, Any]:
        """Submit ``job`` to ``runner_id``; or, with ``runner_id=None`` (or ``tags``), to the fleet: any runner
        with all of ``tags`` (and of ``type``) takes it, and ``runner_id`` in the answer is ``None`` while none can."""
        if job is None:
            raise InvalidRequest("A job to submit is required", field="job")
        if runner_id is not None and tags is None and type is None:
            body = _validated(JobSubmission, job)
            return self.request("POST", f"/runners/{_segment(runner_id)}/jobs", json_body=body)
        if runner_id is not None:
            raise InvalidRequest("Give a runner id or tags and type, not both", field="runner_id")
        routed = {**_validated(JobSubmission, job), "tags": list(tags or []), **({"type": type} if type else {})}
        return self.request("POST", "/jobs", json_body=_validated(FleetJobSubmission, routed))

    def list_all_jobs(
        self,
        status: str | None = None,
        runner_id: str | None = None,
        tags: Iterable[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        """Jobs of every runner, and those held for the fleet (``GET /jobs``)."""
        joined = ",".join(tags) if tags else None
        params = {"status": status, "runner_id": runner_id, "tags": joined, "limit": limit, "offset": offset}
        return self.request("GET", "/jobs", params=params)

    def find_job(self, job_id: str) -> dict[str, Any]:
        """Any job by id, with its ``runner_id`` (``None`` while it is held for the fleet)."""
        return self.request("GET", f"/jobs/{_segment(job_id)}")

    def cancel_job_by_id(self, job_id: str) -> dict[str, Any]:
        """Cancel any job by id: held for the fleet, or on its runner."""
        return self.request("POST", f"/jobs/{_segment(job_id)}/cancel")

    def list_jobs(
        self, runner_id: str, status: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        params = {"status": status, "limit": limit, "offset": offset}
        return self.request("GET", f"/runners/{_segment(runner_id)}/jobs", params=params)

    def get_job(self, runner_id: str, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/runners/{_segment(runner_id)}/jobs/{_segment(job_id)}")

    def cancel_job(self, runner_id: str, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/runners/{_segment(runner_id)}/jobs/{_segment(job_id)}/cancel")

    def wait_for_job(self, runner_id: str, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
        """Poll the job until it is completed, failed, timed out or cancelled; ``JobWaitTimeout`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        interval = 0.02
        while True:
            job = self.get_job(runner_id, job_id)
            if job.get("status") in TERMINAL_JOB_STATUSES:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobWaitTimeout(f"job {job_id} is still {job.get('status')} after {timeout}s", job)
            time.sleep(min(interval, remaining))
            interval = min(interval * 2, 1.0)
