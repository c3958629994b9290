"""The one place where errors become HTTP responses.

Every error answer has the same shape, whatever raised it::

    {"error": {"code": "NOT_FOUND", "message": "...", "details": {...}}, "correlation_id": "..."}

``code`` comes from the ``StagelineError`` family (``errors.py``) and decides the
status; framework errors (request validation, unknown routes, oversized bodies) and
dependency outages are given a code here. Nothing else in the API builds an error body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from stageline.errors import ConcurrencyError, StagelineError
from stageline.events.envelope import ANY, NO_STREAM

__all__ = [
    "CANCELLED_STATE",
    "CORRELATION_STATE",
    "METHODS",
    "STATUS",
    "PayloadTooLarge",
    "allowed_methods",
    "correlation_of",
    "error_response",
    "install",
    "internal_error",
    "render",
    "validation_message",
    "validation_response",
]

log = structlog.get_logger("stageline.api")

STATUS: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "CONFLICT": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
}
"""Error code -> HTTP status. A code not listed here answers 500."""

_CODE_OF_STATUS = {status: code for code, status in STATUS.items()}

CORRELATION_STATE = "correlation_id"
"""Key of the request's correlation id in the ASGI scope's ``state`` (set by the middleware)."""

CANCELLED_STATE = "answer_if_cancelled"
"""Key of the answer a request that has written something gives if the server stops before
it ends (the middleware's default is 503, which says nothing was done), in ``state``."""


class PayloadTooLarge(HTTPException):
    """Raised into whoever reads a request body that grew past the limit."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {max_bytes} bytes")
        self.details = {"max_bytes": max_bytes}


class MalformedBody(HTTPException):
    """Raised into whoever parses a request body that is not UTF-8 or not JSON, saying where.

    An ``HTTPException``, so FastAPI, which reads the body before the route runs, passes it
    on to the handlers (any other exception it would turn into a 400 that says nothing).
    """

    def __init__(self, message: str, kind: str, **where: int) -> None:
        super().__init__(400, message)
        item = {"field": "", "in": "body", "message": message, "type": kind, **where}
        self.details = {"errors": [item]}


def correlation_of(scope: Mapping[str, Any]) -> str | None:
    state = scope.get("state") or {}
    value = state.get(CORRELATION_STATE)
    return value if isinstance(value, str) else None


def error_response(
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    *,
    correlation_id: str | None,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The error envelope as a response; ``status`` defaults to the one of ``code``."""
    body = {
        "error": {"code": code, "message": message, "details": dict(details or {})},
        "correlation_id": correlation_id,
    }
    out_headers = dict(headers or {})
    if code == "UNAVAILABLE":
        out_headers.setdefault("Retry-After", "1")
    return Response(
        content=msgspec.json.encode(body, enc_hook=str),
        status_code=status or STATUS.get(code, 500),
        media_type="application/json",
        headers=out_headers,
    )


def _details(exc: StagelineError) -> dict[str, Any]:
    if isinstance(exc, ConcurrencyError):
        return {
            "stream": exc.stream,
            "expected_version": _version_name(exc.expected),
            "actual_version": exc.actual,
        }
    return dict(exc.details)


def _version_name(version: int) -> int | str:
    return {ANY: "any", NO_STREAM: "no_stream"}.get(version, version)


def render(exc: StagelineError, correlation_id: str | None) -> Response:
    """The response for any ``StagelineError``: its code, message and details."""
    return error_response(exc.code, exc.message, _details(exc), correlation_id=correlation_id)


def internal_error(exc: BaseException, correlation_id: str | None) -> Response:
    """Log an unexpected exception with its traceback; answer 500 without leaking it."""
    log.error("api.unhandled_error", exc_info=exc)
    return error_response(
        "INTERNAL",
        "internal error; the server log has the details under this correlation id",
        correlation_id=correlation_id,
    )


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""The methods a 405's ``Allow`` may name, in the order it names them."""


def allowed_methods(routes: Sequence[BaseRoute], scope: Mapping[str, Any]) -> list[str]:
    """Every method some route of ``routes`` answers at the request's path (RFC 9110's
    ``Allow``), not only those of the first route that matched the path."""
    probe = {
        "type": "http",
        "path": scope["path"],
        "root_path": scope.get("root_path", ""),
        "headers": scope.get("headers", []),
    }
    return [
        method
        for method in METHODS
        if any(route.matches({**probe, "method": method})[0] is Match.FULL for route in routes)
    ]


# -- request validation ------------------------------------------------------------


def _field(loc: Sequence[Any]) -> str:
    """``("body", "events", 0, "type")`` -> ``"events[0].type"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _validation_item(error: Mapping[str, Any]) -> dict[str, Any]:
    loc = list(error.get("loc") or ())
    where = str(loc.pop(0)) if loc and loc[0] in ("body", "query", "path", "header") else "body"
    kind = str(error.get("type", ""))
    message = str(error.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):  # pydantic's, for raised errors
        message = message.removeprefix(prefix)
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        position = loc[0] if loc and isinstance(loc[0], int) else None
        loc = []
        message = f"malformed JSON: {reason}" + (f" at position {position}" if position else "")
    elif not loc and where == "body" and kind in ("model_attributes_type", "dict_type"):
        message = "the request body must be a JSON object sent as Content-Type: application/json"
    return {"field": _field(loc), "in": where, "message": message, "type": kind}


def validation_response(
    errors: Sequence[Mapping[str, Any]], correlation_id: str | None
) -> Response:
    """400 INVALID_ARGUMENT listing every offending field (``details.errors``)."""
    items = [_validation_item(e) for e in errors]
    return error_response(
        "INVALID_ARGUMENT", _message(items), {"errors": items}, correlation_id=correlation_id
    )


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line for pydantic's ``errors``, as a 400's message says it: the first offending
    field and how many more there are."""
    return _message([_validation_item(e) for e in errors])


def _message(items: Sequence[Mapping[str, Any]]) -> str:
    first = items[0] if items else {"field": "", "in": "body", "message": "invalid request"}
    where = first["field"] or first["in"]
    message = f"{where}: {first['message']}"
    if len(items) > 1:
        message += f" (and {len(items) - 1} more)"
    return message


# -- handlers -------------------------------------------------------------------------


async def _on_stageline_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StagelineError)
    if exc.code not in STATUS or STATUS[exc.code] >= 500:
        log.warning("api.error", code=exc.code, error=str(exc))
    return render(exc, correlation_of(request.scope))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return validation_response(exc.errors(), correlation_of(request.scope))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _CODE_OF_STATUS.get(exc.status_code)
    if code is None:
        code = "INVALID_ARGUMENT" if exc.status_code < 500 else "INTERNAL"
    message = str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        allowed = allowed_methods(request.app.router.routes, request.scope)
        if allowed:  # the route that raised it names only its own methods
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
            headers["Allow"] = ", ".join(allowed)
    return error_response(
        code,
        message,
        getattr(exc, "details", None),
        correlation_id=correlation_of(request.scope),
        status=exc.status_code,
        headers=headers,
    )


async def _on_dependency_down(request: Request, exc: Exception) -> Response:
    # the broker's failures do not come here: an append's commands are handed on later by
    # the reconciler, and a redrive, which writes to the broker first, says it itself
    log.warning("api.dependency_unavailable", error=f"{type(exc).__name__}: {exc}")
    return error_response(
        "UNAVAILABLE",
        "the store (the log and the views) could not be reached; retry later",
        {"dependency": "store", "reason": type(exc).__name__},
        correlation_id=correlation_of(request.scope),
    )


def install(app: FastAPI) -> None:
    """Register every handler on ``app``; unexpected exceptions are caught by the middleware."""
    app.add_exception_handler(StagelineError, _on_stageline_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(RedisConnectionError, _on_dependency_down)
    app.add_exception_handler(RedisTimeoutError, _on_dependency_down)
