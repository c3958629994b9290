"""The error envelope: one shape and one status per code, whatever raised the error."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from api_helpers import assert_error, connect
from fastapi import FastAPI
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stageline.api import create_app, errors
from stageline.embedded import EmbeddedServer
from stageline.errors import (
    ConcurrencyError,
    Conflict,
    InvalidArgument,
    InvalidEvent,
    NotFound,
    StagelineError,
    Unavailable,
)
from stageline.events.redis_store import RedisEventStore
from stageline.projections import falkordb_views
from stageline.settings import Settings
from stageline.stack import Stack

RAISED: list[tuple[StagelineError, int, str]] = [
    (InvalidArgument("bad thing", field="x"), 400, "INVALID_ARGUMENT"),
    (InvalidEvent("bad event", type="T"), 400, "INVALID_ARGUMENT"),
    (NotFound("no such thing", id="1"), 404, "NOT_FOUND"),
    (Conflict("clash"), 409, "CONFLICT"),
    (Unavailable("down"), 503, "UNAVAILABLE"),
    (StagelineError("oops"), 500, "INTERNAL"),
]


@pytest.mark.parametrize(
    ("exc", "status", "code"), RAISED, ids=[c[2] + type(c[0]).__name__ for c in RAISED]
)
async def test_each_error_family_maps_to_its_status(
    app: FastAPI, exc: StagelineError, status: int, code: str
) -> None:
    @app.get("/test/raise")
    async def raise_it() -> None:
        raise exc

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/test/raise", headers={"X-Correlation-ID": "err-1"})
    error = assert_error(r, status, code)
    assert error["message"] == exc.message
    assert error["details"] == exc.details
    assert r.json()["correlation_id"] == "err-1"


async def test_a_version_clash_names_the_actual_version(app: FastAPI) -> None:
    @app.get("/test/clash")
    async def clash() -> None:
        raise ConcurrencyError("s-1", expected=-1, actual=4)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        error = assert_error(await c.get("/test/clash"), 409, "CONFLICT")
    assert error["details"] == {
        "stream": "s-1",
        "expected_version": "no_stream",
        "actual_version": 4,
    }


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **kw: Any) -> None:
        self.calls.append((event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.calls.append((event, kw))


async def test_an_unexpected_exception_is_500_logged_and_not_leaked(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(errors, "log", recorder)

    @app.get("/test/boom")
    async def boom() -> None:
        raise RuntimeError("secret database password")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/test/boom", headers={"X-Correlation-ID": "boom-1"})
    error = assert_error(r, 500, "INTERNAL")
    assert "secret" not in r.text and "Traceback" not in r.text
    assert r.headers["X-Correlation-ID"] == "boom-1"
    [(event, kw)] = recorder.calls
    assert event == "api.unhandled_error"
    assert isinstance(kw["exc_info"], RuntimeError)
    assert error["details"] == {}


async def test_unknown_routes_and_methods_use_the_envelope(client: httpx.AsyncClient) -> None:
    error = assert_error(await client.get("/v2/runs"), 404, "NOT_FOUND")
    assert error["message"] == "no route GET /v2/runs"
    r = await client.put("/v1/runs/stats")
    assert "PUT" in assert_error(r, 405, "METHOD_NOT_ALLOWED")["message"]
    assert "GET" in r.headers["Allow"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/runs", {"GET", "POST"}),
        ("PATCH", "/v1/pipelines/p-1", {"GET", "PUT", "DELETE"}),
        ("GET", "/v1/runs/r-1/cancel", {"POST"}),
        ("PUT", "/v1/streams/s-1/events", {"GET", "POST"}),
    ],
)
async def test_a_405_allows_every_method_of_the_path(
    client: httpx.AsyncClient, method: str, path: str, allowed: set[str]
) -> None:
    r = await client.request(method, path)
    error = assert_error(r, 405, "METHOD_NOT_ALLOWED")
    assert error["message"] == f"method {method} is not allowed on {path}"
    named = [m.strip() for m in r.headers["Allow"].split(",")]
    assert len(r.headers.get_list("Allow")) == 1 and len(named) == len(set(named))
    assert set(named) == allowed | ({"HEAD"} if "GET" in allowed else set())


async def test_an_unreachable_store_is_503_unavailable(stack: Stack, workspace: str) -> None:
    dead = RedisEventStore(aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0)))
    app = create_app(stack=dataclasses.replace(stack, store=dead))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://t",
            headers={"X-Workspace": workspace},
        ) as c:
            r = await c.get("/v1/log")
            error = assert_error(r, 503, "UNAVAILABLE")
            assert error["details"] == {"dependency": "store", "reason": "ConnectionError"}
            assert error["message"] == (
                "the store (the log and the views) could not be reached; retry later"
            )
            assert r.headers["Retry-After"] == "1"
            r = await c.post("/v1/streams/s/events", json={"events": [{"type": "A", "data": {}}]})
            assert_error(r, 503, "UNAVAILABLE")
    finally:
        await dead.close()


def test_every_code_has_one_status() -> None:
    assert errors.STATUS["INVALID_ARGUMENT"] == 400
    assert errors.STATUS["NOT_FOUND"] == 404
    assert errors.STATUS["CONFLICT"] == 409
    assert errors.STATUS["UNAVAILABLE"] == 503
    assert errors.STATUS["INTERNAL"] == 500
    assert len(set(errors.STATUS.values())) == len(errors.STATUS)


def test_openapi_documents_the_envelope_instead_of_422(app: FastAPI) -> None:
    schema = app.openapi()
    post = schema["paths"]["/v1/runs"]["post"]
    assert "422" not in post["responses"]
    assert post["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorEnvelope"
    }
    assert set(post["responses"]) >= {"200", "202", "404", "409", "413"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "SubmitRun" in schema["components"]["schemas"]
    paths = set(schema["paths"])
    assert {"/v1/runs/stats", "/v1/streams/{stream}/events", "/v1/log", "/readyz"} <= paths


async def test_reads_of_the_views_of_a_frozen_server_are_503_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch, workspace: str
) -> None:
    monkeypatch.setattr(falkordb_views, "READ_TIMEOUT_SECONDS", 0.5)
    with tempfile.TemporaryDirectory(prefix="slfz") as d:
        server = EmbeddedServer(Path(d))
        stack = await Stack.open(Settings(redis_url=server.start()))
        try:
            async with connect(create_app(stack=stack), workspace) as client:
                assert (await client.get("/v1/runs")).status_code == 200
                assert server.pid is not None
                os.kill(server.pid, signal.SIGSTOP)  # as a hung server: it takes, never answers
                try:
                    for path in (
                        "/v1/runs",
                        f"/v1/runs/{uuid.uuid4()}",
                        "/v1/runs/stats",
                        "/v1/dlq",
                        "/v1/entities",
                        "/v1/pipelines",
                    ):
                        async with asyncio.timeout(5):  # they hung while it was frozen
                            r = await client.get(path)
                        error = assert_error(r, 503, "UNAVAILABLE")
                        assert error["details"]["reason"] == "TimeoutError", path
                finally:
                    os.kill(server.pid, signal.SIGCONT)
                assert (await client.get("/v1/runs")).status_code == 200  # and after it, again
        finally:
            await stack.close()
            server.stop()
