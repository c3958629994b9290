"""Assertions and helpers shared by the API tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stageline.actors.channels import CommandBus
from stageline.actors.deadletters import DeadLetters
from stageline.actors.operations import RunOperations
from stageline.actors.submit import Submitter
from stageline.cli_feed import Message, SseParser
from stageline.stack import Stack

HANG_GUARD = 30.0
"""Seconds a test waits for what must come before it fails: a guard against hangs, not a
bound on how long anything takes."""


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check the error envelope's exact shape; return its ``error`` part."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "correlation_id"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    assert body["correlation_id"] == response.headers["X-Correlation-ID"]
    error: dict[str, Any] = body["error"]
    return error


def fields(error: dict[str, Any]) -> list[str]:
    """The offending field paths of a validation error."""
    return [e["field"] for e in error["details"]["errors"]]


def nested(depth: int, leaf: Any = 1) -> Any:
    """``leaf`` inside ``depth`` levels of ``{"a": [{"a": [...]}]}``: an object outermost."""
    value = leaf
    for level in range(depth, 0, -1):
        value = {"a": value} if level % 2 else [value]
    return value


@asynccontextmanager
async def connect(app: FastAPI, workspace: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of ``app``, sending ``workspace`` (if any) on every request."""
    headers = {"X-Workspace": workspace} if workspace is not None else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers=headers, timeout=30
    ) as client:
        yield client


@asynccontextmanager
async def broker_down(stack: Stack) -> AsyncIterator[Stack]:
    """``stack`` with its submitter, run operations and dead letters on a broker that refuses
    every connection (a separate ``STAGELINE_BROKER_URL`` that is down); the store is up."""
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    bus = CommandBus(dead)
    try:
        yield dataclasses.replace(
            stack,
            bus=bus,
            submitter=Submitter(stack.store, stack.catalog, bus),
            operations=RunOperations(stack.store, stack.catalog, stack.actors, bus),
            dead_letters=DeadLetters(stack.store, bus, stack.actors.names),
        )
    finally:
        await dead.aclose()


async def reconcile(stack: Stack, workspace: str, position: int) -> int:
    """One pass of the reconciler over ``workspace``, once the view holds ``position``, as
    if its runs had been idle long enough; how many it nudged."""
    assert await stack.views.wait_for(workspace, position, HANG_GUARD)
    reconciler = stack.reconciler()
    return await reconciler.pass_once(workspace, now=time.time() + 2 * reconciler.idle_seconds)


async def submit(
    client: httpx.AsyncClient,
    text: str = "Met Alice in Berlin to talk about the Redis migration.",
    *,
    wait: float | None = None,
    headers: dict[str, str] | None = None,
    **input_fields: Any,
) -> httpx.Response:
    """POST /v1/runs of the memory-ingest pipeline."""
    params = {"wait": wait} if wait is not None else {}
    body = {"pipeline": "memory-ingest", "input": {"text": text, **input_fields}}
    return await client.post("/v1/runs", json=body, params=params, headers=headers or {})


class Projecting:
    """The package's projector task, which a test may pause to see the view lag behind."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.stack.projector().run(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)
            self._task = None

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        await self.stop()
        try:
            yield
        finally:
            self.start()


async def submit_flaky(
    client: httpx.AsyncClient, *, wait: float | None = None, **flaky: Any
) -> httpx.Response:
    """POST /v1/runs of the ``flaky`` pipeline, its flaky stage tuned by ``flaky``."""
    params = {"wait": wait} if wait is not None else {}
    body = {"pipeline": "flaky", "input": {"text": "a flaky item", "flaky": flaky}}
    return await client.post("/v1/runs", json=body, params=params)


async def run_events(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    """Every event of the run's stream, oldest first, straight from the log."""
    r = await client.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


async def head(client: httpx.AsyncClient) -> int:
    """The workspace log's newest position: as ``min_position``, a read sees everything so far."""
    r = await client.get("/v1/log", params={"after": 0, "limit": 1})
    assert r.status_code == 200, r.text
    position: int = r.json()["head"]
    return position


async def until_status(
    client: httpx.AsyncClient, run_id: str, status: str, *, min_position: int, within: float = 20
) -> dict[str, Any]:
    """The run once the view shows ``status``; fails if it does not within ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        r = await client.get(f"/v1/runs/{run_id}", params={"min_position": min_position})
        assert r.status_code == 200, r.text
        run: dict[str, Any] = r.json()
        if run["status"] == status:
            return run
        assert asyncio.get_running_loop().time() < deadline, f"still {run['status']}: {run}"
        await asyncio.sleep(0.05)


async def until_event(
    client: httpx.AsyncClient, run_id: str, match: dict[str, Any], *, within: float = 20
) -> dict[str, Any]:
    """The run's first event whose type and data fields equal ``match``, once it is in the log."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        for event in await run_events(client, run_id):
            fields = {"type": event["type"], **event["data"]}
            if all(fields.get(k) == v for k, v in match.items()):
                return event
        assert asyncio.get_running_loop().time() < deadline, f"no event {match} in {run_id}"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """``app`` on a real port, in this event loop, for clients in other threads."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=HANG_GUARD,
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the API did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.feeds.stopping.set()  # as `stageline up` does: open live feeds end first
        server.should_exit = True
        await task


class FeedReader:
    """The messages of a live feed's answer, read as they come.

    Each wait fails after ``HANG_GUARD`` seconds, keep-alive comments or not.
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.raw = bytearray()
        """Every byte received so far."""
        self._parser = SseParser()
        self._chunks = response.aiter_bytes()
        self._ready: deque[Message] = deque()

    async def _more(self) -> bool:
        """Read the next chunk; False when the answer ended."""
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            return False
        self.raw += chunk
        self._ready.extend(self._parser.feed(chunk))
        return True

    async def next(self) -> Message:
        """The next message (an event, or an ``id:``-only block)."""
        async with asyncio.timeout(HANG_GUARD):
            while not self._ready:
                assert await self._more(), f"the feed ended: {bytes(self.raw)!r}"
        return self._ready.popleft()

    async def events(self, count: int) -> list[Message]:
        """The next ``count`` events (``id:``-only blocks in between are passed over)."""
        out: list[Message] = []
        async with asyncio.timeout(HANG_GUARD):
            while len(out) < count:
                message = await self.next()
                if message.data is not None:
                    out.append(message)
        return out

    async def until_raw(self, part: bytes) -> None:
        """Read on until ``part`` was received."""
        async with asyncio.timeout(HANG_GUARD):
            while part not in self.raw:
                assert await self._more(), f"the feed ended without {part!r}: {bytes(self.raw)!r}"

    async def to_the_end(self) -> None:
        async with asyncio.timeout(HANG_GUARD):
            while await self._more():
                pass


class Proxy:
    """A TCP proxy in front of ``port`` that a test can cut.

    ``cut()`` drops every connection through it and holds new ones (accepted, not
    forwarded) until ``mend()``; ``heads`` holds the first bytes each forwarded
    connection sent (a request's head).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.heads: list[bytes] = []
        self.url = ""
        self._open = asyncio.Event()
        self._open.set()
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def cut(self) -> None:
        self._open.clear()
        for writer in list(self._links):
            writer.transport.abort()

    def mend(self) -> None:
        self._open.set()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._links.add(writer)
        try:
            await self._open.wait()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                await asyncio.gather(
                    self._pipe(reader, up_writer, record=True), self._pipe(up_reader, writer)
                )
            finally:
                up_writer.transport.abort()
        except OSError:
            pass
        finally:
            self._links.discard(writer)
            writer.transport.abort()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, record: bool = False
    ) -> None:
        try:
            while data := await source.read(65536):
                if record:
                    self.heads.append(data)
                    record = False
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.transport.abort()  # one side gone: the other goes too


@asynccontextmanager
async def proxied(url: str) -> AsyncIterator[Proxy]:
    """A ``Proxy`` in front of the server at ``url`` (``http://127.0.0.1:<port>``)."""
    proxy = Proxy(int(url.rsplit(":", 1)[1]))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
