"""aiohttp pieces both daemons' APIs use: the error middleware, body and query parsing, JSON responses.

Every failure leaves a server as the spec's envelope. Typed :class:`~shared.errors.ApiError` s map to their
code and status; aiohttp's own HTTP errors (unknown route, wrong method, body too large) are translated; any
other exception is a bug: logged with its traceback, answered ``INTERNAL_ERROR`` without one. Requests aiohttp
cannot even parse (a request line over 8 KiB, a malformed header) never reach a middleware: :func:`setup_server`
answers those with the envelope too, without echoing the bytes, and bounds how long a connection may sit idle
or take to send its headers.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any, TypeVar

import structlog
from aiohttp import web, web_protocol
from pydantic import BaseModel, Field, ValidationError

from shared.config import Settings
from shared.errors import (
    ApiError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
)
from shared.timeutil import parse_iso

M = TypeVar("M", bound=BaseModel)
log = structlog.get_logger(__name__)


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def json_response(data: BaseModel | dict[str, Any], status: int = 200) -> web.Response:
    body = data.model_dump_json() if isinstance(data, BaseModel) else dumps(data)
    return web.Response(text=body, status=status, content_type="application/json")


def error_response(error: ApiError) -> web.Response:
    return web.Response(text=dumps(error.envelope()), status=error.status, content_type="application/json")


# --- the connection level: unparseable requests, idle and slow connections ------------------------------------


class ServerTimeouts(Settings):
    """Bounds on a client connection, for a daemon's ``listen`` settings."""

    header_read_timeout: float = Field(default=10.0, gt=0, le=3600)
    """Seconds a new connection may take to send its first request's headers before it is closed."""
    keepalive_timeout: float = Field(default=15.0, gt=0, le=3600)
    """Seconds an idle keep-alive connection stays open between requests (and for its next headers)."""


def _bad_request_message(status: int, exc: BaseException | None) -> str:
    """A fixed text per kind of parse error: never the client's bytes (aiohttp's own messages quote them)."""
    name = type(exc).__name__ if exc is not None else ""
    if name == "LineTooLong":
        return "The request line or a header line is longer than this server accepts (8190 bytes)"
    if name in ("BadHttpMethod", "BadStatusLine"):
        return "The request line is not valid HTTP/1.1"
    if name in ("InvalidHeader", "BadHttpMessage", "TransferEncodingError", "ContentLengthError"):
        return "The request's headers or framing are not valid HTTP/1.1"
    return HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Bad request"


class _EnvelopeRequestHandler(web_protocol.RequestHandler):
    header_read_timeout: float = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # aiohttp closes a connection that has not sent a complete request by its keep-alive deadline; the
        # first request's headers get the (usually shorter) header-read bound instead.
        handle = getattr(self, "_keepalive_handle", None)
        if handle is not None and self.header_read_timeout < self.keepalive_timeout:
            handle.cancel()
            deadline = self._loop.time() + self.header_read_timeout
            self._next_keepalive_close_time = deadline
            self._keepalive_handle = self._loop.call_at(deadline, self._process_keepalive)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if status >= 500:
            log.error("error handling a request", exc_info=exc)
            error: ApiError = InternalError("Internal server error; the server log has the details")
        else:
            log.info("refused a request that is not valid HTTP", status=status, error=type(exc).__name__)
            error = ApiError(_bad_request_message(status, exc))
            error.status = status  # type: ignore[misc]
            error.code = "INVALID_REQUEST"  # type: ignore[misc]
        response = error_response(error)
        response.force_close()
        return response


class _EnvelopeServer(web.Server):
    handler_class: type[_EnvelopeRequestHandler] = _EnvelopeRequestHandler

    def __call__(self) -> web_protocol.RequestHandler:
        return self.handler_class(self, loop=self._loop, **self._kwargs)


def setup_server(app: web.Application, timeouts: ServerTimeouts) -> None:
    """Serve ``app`` with envelope answers to unparseable requests and the connection bounds of ``timeouts``,
    however it is run (``web.run_app`` or an ``AppRunner``)."""
    make_handler = app._make_handler
    handler_class = type(
        "RequestHandler", (_EnvelopeRequestHandler,), {"header_read_timeout": timeouts.header_read_timeout}
    )

    def _make_handler(**kwargs: Any) -> web.Server:
        kwargs["keepalive_timeout"] = timeouts.keepalive_timeout
        server = make_handler(**kwargs)
        server.__class__ = _EnvelopeServer
        server.handler_class = handler_class  # type: ignore[attr-defined]
        return server

    app._make_handler = _make_handler  # type: ignore[method-assign]


def _translate(exc: web.HTTPException, request: web.Request) -> ApiError:
    if isinstance(exc, web.HTTPNotFound):
        return RouteNotFound(f"No API route matches {request.method} {request.path}", path=request.path)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        return MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}; allowed: {', '.join(allowed)}",
            path=request.path,
            allowed_methods=allowed,
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("The request body is larger than this server accepts", path=request.path)
    error = ApiError(exc.reason or "HTTP error", path=request.path)
    error.status = exc.status  # type: ignore[misc]
    error.code = "INVALID_REQUEST" if 400 <= exc.status < 500 else "INTERNAL_ERROR"  # type: ignore[misc]
    return error


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(_translate(e, request))
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        return error_response(InternalError("Internal server error; the server log has the details"))


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(e: ValidationError, what: str = "request body") -> InvalidRequest:
    errors = e.errors(include_url=False)
    first = errors[0]
    field = _field_path(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    problems = [{"field": _field_path(tuple(err.get("loc", ()))), "message": err.get("msg", "")} for err in errors[:20]]
    text = f"Invalid {what}: {field}: {message}" if field else f"Invalid {what}: {message}"
    return InvalidRequest(text, field=field or "body", errors=problems)


async def read_json(request: web.Request, *, optional: bool = False) -> Any:
    if not request.body_exists:  # (not ``can_read_body``: a middleware may have read it already; it is cached)
        if optional:
            return {}
        raise InvalidRequest("A JSON request body is required", field="body")
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise InvalidRequest("A JSON request body is required", field="body")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidRequest(f"Malformed JSON in request body: {e}", field="body") from e
    except RecursionError as e:
        raise InvalidRequest("Malformed JSON in request body: nested too deeply", field="body") from e


async def parse_body(request: web.Request, model: type[M], *, optional: bool = False) -> M:
    data = await read_json(request, optional=optional)
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object", field="body")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from e


def query_int(request: web.Request, name: str, default: int | None, minimum: int, maximum: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"Query parameter '{name}' must be an integer, got {raw!r}", field=name) from None
    if not minimum <= value <= maximum:
        raise InvalidRequest(
            f"Query parameter '{name}' must be between {minimum} and {maximum}, got {value}", field=name
        )
    return value


def query_choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise InvalidRequest(
            f"Query parameter '{name}' must be one of {', '.join(choices)}; got {raw!r}",
            field=name,
            allowed=list(choices),
        )
    return raw


def query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise InvalidRequest(f"Query parameter '{name}' must be true or false, got {raw!r}", field=name)


def query_time(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return parse_iso(raw).timestamp()
    except ValueError:
        raise InvalidRequest(
            f"Query parameter '{name}' must be an ISO 8601 timestamp such as 2024-01-15T10:00:00Z, got {raw!r}",
            field=name,
        ) from None
