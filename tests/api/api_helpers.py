"""Assertions shared by the API tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from stageline.stack import Stack


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
