"""The error hierarchy of the API and its envelope.

Every failure a client can see is one of these classes; one middleware on each server turns them into the
spec's envelope, and the SDK and the coordinator's agent client turn envelopes back into them, so a
``RUNNER_NOT_FOUND`` raised on an agent reaches a Python caller as :class:`RunnerNotFound`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from shared.timeutil import isoformat, utcnow


class ApiError(Exception):
    code: ClassVar[str] = "INTERNAL_ERROR"
    status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def envelope(self) -> dict[str, Any]:
        details = {**self.details, "timestamp": isoformat(utcnow())}
        return {"success": False, "error": {"code": self.code, "message": self.message, "details": details}}


class InvalidRequest(ApiError):
    code = "INVALID_REQUEST"
    status = 400


class AuthenticationRequired(ApiError):
    code = "AUTHENTICATION_REQUIRED"
    status = 401


class AuthorizationFailed(ApiError):
    code = "AUTHORIZATION_FAILED"
    status = 403


class RunnerNotFound(ApiError):
    code = "RUNNER_NOT_FOUND"
    status = 404

    def __init__(self, runner_id: str) -> None:
        super().__init__(f"Runner with ID '{runner_id}' not found", runner_id=runner_id)


class JobNotFound(ApiError):
    code = "JOB_NOT_FOUND"
    status = 404

    def __init__(self, job_id: str, runner_id: str | None = None) -> None:
        where = f" on runner '{runner_id}'" if runner_id else ""
        super().__init__(f"Job with ID '{job_id}' not found{where}", job_id=job_id, runner_id=runner_id)


class RouteNotFound(ApiError):
    code = "NOT_FOUND"
    status = 404


class MethodNotAllowed(ApiError):
    code = "METHOD_NOT_ALLOWED"
    status = 405


class RunnerBusy(ApiError):
    """The runner has queued or running jobs and the call would drop them."""

    code = "RUNNER_BUSY"
    status = 409


class JobNotCancellable(ApiError):
    code = "JOB_NOT_CANCELLABLE"
    status = 409


class PayloadTooLarge(ApiError):
    code = "PAYLOAD_TOO_LARGE"
    status = 413


class RateLimitExceeded(ApiError):
    code = "RATE_LIMIT_EXCEEDED"
    status = 429


class RunnerUnavailable(ApiError):
    code = "RUNNER_UNAVAILABLE"
    status = 503


class StorageUnavailable(ApiError):
    """The server's own storage refuses writes (disk full, read-only, I/O errors); retry once it recovers."""

    code = "STORAGE_UNAVAILABLE"
    status = 503


class InternalError(ApiError):
    code = "INTERNAL_ERROR"
    status = 500


def _all_subclasses(cls: type[ApiError]) -> list[type[ApiError]]:
    found: list[type[ApiError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


_ALL_ERRORS: list[type[ApiError]] = [ApiError, *_all_subclasses(ApiError)]
ERRORS_BY_CODE: dict[str, type[ApiError]] = {cls.code: cls for cls in _ALL_ERRORS}


def from_envelope(status: int, body: Any) -> ApiError:
    """Rebuild the typed error a peer answered with; an unknown or malformed body becomes ``INTERNAL_ERROR``."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return InternalError(f"unexpected HTTP {status} without an error envelope", http_status=status)
    cls = ERRORS_BY_CODE.get(str(error.get("code")), InternalError)
    raw_details = error.get("details")
    details = {k: v for k, v in raw_details.items() if k != "timestamp"} if isinstance(raw_details, dict) else {}
    exc = ApiError.__new__(cls)
    ApiError.__init__(exc, str(error.get("message", "")), **details)
    return exc
