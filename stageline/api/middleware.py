"""ASGI middleware: correlation ids, the log context, the body size limit, the last-resort 500,
no body in answer to HEAD.

All are plain ASGI classes (not ``BaseHTTPMiddleware``), so the endpoint runs in
the same task and sees the structlog context bound here.
"""

from __future__ import annotations

import asyncio
import re
import uuid

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stageline.api import errors

__all__ = ["CORRELATION_HEADER", "BodyLimitMiddleware", "CorrelationMiddleware", "HeadMiddleware"]

CORRELATION_HEADER = "X-Correlation-ID"
WORKSPACE_HEADER = "X-Workspace"

# what a caller's id may look like: printable, no spaces, short enough for every log line
_CORRELATION = re.compile(r"^[\x21-\x7e]{1,200}$")

log = structlog.get_logger("stageline.api")


def correlation_from(headers: Headers) -> str:
    """The caller's ``X-Correlation-ID`` when it is usable, else a new one."""
    given = headers.get(CORRELATION_HEADER)
    if given is not None and _CORRELATION.fullmatch(given):
        return given
    return uuid.uuid4().hex


class CorrelationMiddleware:
    """Gives every request a correlation id and every response an ``X-Correlation-ID``.

    The id is taken from the request header (or generated), stored in the scope's
    ``state`` for handlers, and bound with the workspace into structlog's context
    for every line logged while the request runs. An exception nothing else handled
    is logged here and answered with the INTERNAL envelope, never a traceback; a
    request cancelled as the server stops, with UNAVAILABLE, unless it left the answer
    for that case in ``state`` (``errors.CANCELLED_STATE``: it had written something).
    """

    def __init__(self, app: ASGIApp, *, default_workspace: str) -> None:
        self.app = app
        self.default_workspace = default_workspace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        correlation_id = correlation_from(headers)
        scope.setdefault("state", {})[errors.CORRELATION_STATE] = correlation_id
        workspace = headers.get(WORKSPACE_HEADER) or self.default_workspace
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[CORRELATION_HEADER] = correlation_id
            await send(message)

        with structlog.contextvars.bound_contextvars(
            correlation_id=correlation_id, workspace=workspace
        ):
            try:
                await self.app(scope, receive, send_with_id)
            except asyncio.CancelledError:
                # the server is stopping: uvicorn cancels what outlasts its graceful
                # shutdown, and logs a cancellation raised on as an error with its traceback
                log.warning("api.request_cancelled", path=scope["path"])
                if not started:
                    # what the request did so far, if it said; else nothing was done
                    response = scope["state"].get(errors.CANCELLED_STATE) or (
                        errors.error_response(
                            "UNAVAILABLE",
                            "the server is stopping; retry",
                            correlation_id=correlation_id,
                        )
                    )
                    await response(scope, receive, send_with_id)
            except Exception as exc:
                if started:  # too late for an error answer: the server closes the connection
                    log.error("api.error_after_response_started", exc_info=exc)
                    raise
                response = errors.internal_error(exc, correlation_id)
                await response(scope, receive, send_with_id)


class BodyLimitMiddleware:
    """Refuses request bodies larger than ``max_bytes`` with 413 PAYLOAD_TOO_LARGE.

    A declared ``Content-Length`` is checked before the app runs; a chunked body is
    counted as it streams in, and reading past the limit raises a 413 ``HTTPException``
    into whoever reads it (FastAPI passes those through to the error handlers).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            refusal = None
            if not declared.isdigit():
                refusal = errors.error_response(
                    "INVALID_ARGUMENT",
                    "Content-Length must be a non-negative integer",
                    {"content_length": declared},
                    correlation_id=errors.correlation_of(scope),
                )
            elif int(declared) > self.max_bytes:
                too_large = errors.PayloadTooLarge(self.max_bytes)
                refusal = errors.error_response(
                    "PAYLOAD_TOO_LARGE",
                    str(too_large.detail),
                    {**too_large.details, "content_length": int(declared)},
                    correlation_id=errors.correlation_of(scope),
                )
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise errors.PayloadTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted_receive, send)


class HeadMiddleware:
    """Sends no body in answer to HEAD, whatever answered it (a route's HEAD twin, see
    ``routing.Router``, or an error handler): the status and headers, ``Content-Length``
    included, stay those of the GET."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, headers_only)
