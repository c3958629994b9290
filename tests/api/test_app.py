"""``create_app``: who opens and closes the stack, and the documents it serves."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from stageline.api import create_app
from stageline.settings import Settings
from stageline.stack import Stack


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[Stack]:
    """Every stack closed during the test."""
    calls: list[Stack] = []
    original = Stack.close

    async def close(self: Stack) -> None:
        calls.append(self)
        await original(self)

    monkeypatch.setattr(Stack, "close", close)
    return calls


async def test_without_a_stack_the_lifespan_opens_one_and_closes_it(
    redis_url: str, workspace: str, closed: list[Stack]
) -> None:
    app = create_app(settings=Settings(redis_url=redis_url, workspace=workspace))
    assert app.state.stack is None
    async with app.router.lifespan_context(app):
        opened = app.state.stack
        assert isinstance(opened, Stack) and opened.store_url == redis_url
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            assert (await c.get("/readyz")).status_code == 200
            r = await c.post("/v1/streams/s/events", json={"events": [{"type": "A", "data": {}}]})
            assert r.status_code == 201
            assert (await c.get("/v1/log")).json()["head"] == 1
        assert closed == []
    assert closed == [opened]
    assert app.state.stack is None


async def test_a_given_stack_is_used_and_left_open(stack: Stack, closed: list[Stack]) -> None:
    app = create_app(stack=stack)
    assert app.state.settings is stack.settings
    async with app.router.lifespan_context(app):
        assert app.state.stack is stack
    assert closed == []
    assert await stack.store.client.ping()


async def test_the_openapi_document_and_docs_are_served(app: FastAPI) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        docs = await c.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        schema = (await c.get("/openapi.json")).json()
    assert schema["info"]["title"] == "stageline"
    submit = schema["paths"]["/v1/runs"]["post"]
    params = {p["name"] for p in submit["parameters"]}
    assert {"wait", "Idempotency-Key", "X-Workspace"} <= params
    assert "Start a run" in submit["description"]
    for path, method in [
        ("/v1/runs/{run_id}/undo", "post"),
        ("/v1/runs/{run_id}/retry", "post"),
        ("/v1/runs/{run_id}/cancel", "post"),
        ("/v1/dlq", "get"),
        ("/v1/dlq/{dead_letter}", "delete"),
        ("/v1/dlq/{dead_letter}/redrive", "post"),
        ("/v1/entities", "get"),
    ]:
        assert schema["paths"][path][method]["description"], path
    assert set(schema["paths"]["/v1/runs/{run_id}/retry"]["post"]["responses"]) == {
        "202", "400", "404", "409", "503",
    }  # fmt: skip
