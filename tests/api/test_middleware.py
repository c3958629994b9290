"""Correlation ids on every response, the log context, and the request body limit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import structlog
from api_helpers import assert_error, submit
from fastapi import FastAPI

from stageline.api.middleware import correlation_from
from stageline.stack import Stack


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/unknown"),  # 404 from a handler
        ("GET", "/no/such/route"),  # 404 from the router
        ("DELETE", "/v1/runs"),  # 405
    ],
)
async def test_the_correlation_id_is_echoed_on_every_response(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    r = await client.request(method, path, headers={"X-Correlation-ID": "abc-123"})
    assert r.headers["X-Correlation-ID"] == "abc-123"
    if r.status_code >= 400:
        assert r.json()["correlation_id"] == "abc-123"


async def test_a_correlation_id_is_generated_when_none_or_an_unusable_one_is_sent(
    client: httpx.AsyncClient,
) -> None:
    first = (await client.get("/healthz")).headers["X-Correlation-ID"]
    second = (await client.get("/healthz")).headers["X-Correlation-ID"]
    assert len(first) == 32 and first != second
    for unusable in ("has space", "x" * 201, ""):
        r = await client.get("/no/route", headers={"X-Correlation-ID": unusable})
        generated = r.headers["X-Correlation-ID"]
        assert generated != unusable and len(generated) == 32
        assert r.json()["correlation_id"] == generated


def test_correlation_from_keeps_only_printable_ids() -> None:
    assert correlation_from(httpx.Headers({"x-correlation-id": "a:b/c=d"})) == "a:b/c=d"
    assert correlation_from(httpx.Headers({"x-correlation-id": "a\tb"})) != "a\tb"


async def test_the_correlation_id_and_workspace_are_bound_for_logging(
    app: FastAPI, workspace: str
) -> None:
    seen: dict[str, Any] = {}

    @app.get("/test/context")
    async def context() -> dict[str, Any]:
        seen.update(structlog.contextvars.get_contextvars())
        return {}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        await c.get(
            "/test/context", headers={"X-Correlation-ID": "log-1", "X-Workspace": workspace}
        )
    assert seen == {"correlation_id": "log-1", "workspace": workspace}
    assert "correlation_id" not in structlog.contextvars.get_contextvars()  # unbound after


async def test_a_declared_oversized_body_is_413_and_writes_nothing(
    make_client: Callable[..., Any], stack: Stack, workspace: str
) -> None:
    async with make_client(max_body_bytes=2048) as client:
        r = await submit(client, "x" * 3000)
        error = assert_error(r, 413, "PAYLOAD_TOO_LARGE")
        assert error["details"]["max_bytes"] == 2048
        assert error["details"]["content_length"] > 2048
        assert await stack.store.head(workspace) == 0
        assert (await submit(client, "x" * 1500)).status_code == 202


async def test_a_streamed_oversized_body_is_413_and_writes_nothing(
    make_client: Callable[..., Any], stack: Stack, workspace: str
) -> None:
    body = json.dumps({"events": [{"type": "Big", "data": {"s": "x" * 3000}}]}).encode()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    async with make_client(max_body_bytes=2048) as client:
        for path in ("/v1/streams/big/events", "/v1/runs"):
            r = await client.post(
                path, content=chunks(), headers={"Content-Type": "application/json"}
            )
            assert "content-length" not in r.request.headers
            error = assert_error(r, 413, "PAYLOAD_TOO_LARGE")
            assert error["details"] == {"max_bytes": 2048}
    assert await stack.store.head(workspace) == 0


async def test_a_streamed_body_within_the_limit_is_accepted(
    make_client: Callable[..., Any],
) -> None:
    body = json.dumps({"events": [{"type": "Small", "data": {"s": "x" * 1000}}]}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 300):
            yield body[i : i + 300]

    async with make_client(max_body_bytes=2048) as client:
        r = await client.post(
            "/v1/streams/small/events",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 201, r.text


async def test_a_malformed_content_length_is_400(app: FastAPI, workspace: str) -> None:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/runs",
        "raw_path": b"/v1/runs",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("test", 80),
        "headers": [(b"content-length", b"12abc"), (b"x-workspace", workspace.encode())],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 400
    body = json.loads(sent[1]["body"])
    assert body["error"]["code"] == "INVALID_ARGUMENT"
    assert "Content-Length" in body["error"]["message"]
    assert dict(sent[0]["headers"])[b"x-correlation-id"].decode() == body["correlation_id"]
