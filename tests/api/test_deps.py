"""The workspace header (and query parameter): default, validation, isolation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import structlog
from api_helpers import assert_error
from fastapi import FastAPI

from stageline.api import create_app
from stageline.api.deps import Workspace
from stageline.stack import Stack


@pytest.mark.parametrize("workspace", ["", "has space", "-dash", "a" * 65, "x/y", "ws\n"])
async def test_a_malformed_workspace_is_400_and_writes_nothing(
    app: FastAPI, stack: Stack, workspace: str
) -> None:
    before = await stack.store.workspaces()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        headers = {"X-Workspace": workspace}
        r = await c.post(
            "/v1/runs", json={"pipeline": "memory-ingest", "input": {"text": "hi"}}, headers=headers
        )
        error = assert_error(r, 400, "INVALID_ARGUMENT")
        assert "workspace" in error["message"]
        r = await c.post(
            "/v1/streams/s/events", json={"events": [{"type": "A", "data": {}}]}, headers=headers
        )
        assert_error(r, 400, "INVALID_ARGUMENT")
        assert_error(await c.get("/v1/log", headers=headers), 400, "INVALID_ARGUMENT")
    assert await stack.store.workspaces() == before


async def test_without_the_header_the_default_workspace_is_used(
    stack: Stack, workspace: str
) -> None:
    settings = stack.settings.model_copy(update={"workspace": workspace})
    own = create_app(stack=stack, settings=settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=own), base_url="http://t") as c:
        r = await c.post("/v1/streams/s/events", json={"events": [{"type": "A", "data": {}}]})
        assert r.status_code == 201
    assert await stack.store.head(workspace) == 1
    event = (await stack.store.read_log(workspace))[0]
    assert event.workspace == workspace


async def test_workspaces_never_see_each_other(
    client: httpx.AsyncClient, app: FastAPI, workspace: str
) -> None:
    body = {"events": [{"type": "A", "data": {"secret": 1}}]}
    assert (await client.post("/v1/streams/s/events", json=body)).status_code == 201
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"X-Workspace": workspace + "x"},
    ) as other:
        assert_error(await other.get("/v1/streams/s/events"), 404, "NOT_FOUND")
        assert (await other.get("/v1/log")).json()["events"] == []
        r = await other.post("/v1/streams/s/events", json={**body, "expected_version": "no_stream"})
        assert r.status_code == 201 and r.json()["positions"] == [1]


async def test_a_workspace_named_by_the_query_parameter_is_the_one_bound_for_logging(
    app: FastAPI, workspace: str
) -> None:
    seen: list[tuple[str, Any]] = []

    @app.get("/test/workspace")
    async def named(chosen: Workspace) -> dict[str, Any]:
        seen.append((chosen, structlog.contextvars.get_contextvars()["workspace"]))
        return {}

    default = app.state.settings.workspace
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        await c.get("/test/workspace")
        await c.get("/test/workspace", params={"workspace": workspace})
        await c.get("/test/workspace", headers={"X-Workspace": workspace})
    assert seen == [(default, default), (workspace, workspace), (workspace, workspace)]


async def test_every_route_takes_the_workspace_query_parameter(
    client: httpx.AsyncClient, app: FastAPI, stack: Stack, workspace: str
) -> None:
    other = workspace + "-q"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        body = {"pipeline": "memory-ingest", "input": {"text": "hi"}}
        r = await c.post("/v1/runs", json=body, params={"workspace": other})
        assert r.status_code == 202, r.text
        assert await stack.store.stream_version(other, r.json()["stream"]) >= 0
        events = {"events": [{"type": "A", "data": {}}]}
        r = await c.post("/v1/streams/s/events", json=events, params={"workspace": other})
        assert r.status_code == 201, r.text
        assert (await c.get("/v1/streams/s/events", params={"workspace": other})).status_code == 200
    # the client's header names another workspace: 400, and nothing is written
    r = await client.post("/v1/streams/s/events", json=events, params={"workspace": other})
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert error["details"] == {"header": workspace, "query": other}
    assert await stack.store.head(workspace) == 0


@pytest.mark.parametrize("workspace", ["_global", "has space", ""])
async def test_a_malformed_workspace_query_parameter_is_400_as_the_header(
    app: FastAPI, stack: Stack, workspace: str
) -> None:
    before = await stack.store.workspaces()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for headers, params in (({"X-Workspace": workspace}, {}), ({}, {"workspace": workspace})):
            r = await c.post(
                "/v1/runs",
                json={"pipeline": "memory-ingest", "input": {"text": "hi"}},
                headers=headers,
                params=params,
            )
            assert "workspace" in assert_error(r, 400, "INVALID_ARGUMENT")["message"]
    assert await stack.store.workspaces() == before
