"""``Router``: every GET route answers HEAD with the GET's status and headers, no body; a
query parameter that takes one value is refused when repeated."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from api_helpers import HANG_GUARD, assert_error, fields
from fastapi import FastAPI

from stageline.api.feed import HEADERS
from stageline.stack import Stack

# headers whose values differ from one answer to the next whatever the method
_VARYING = {"x-correlation-id", "content-length"}


def _get_paths(app: FastAPI) -> list[str]:
    """Each GET route of the schema with its parameters filled in, and /metrics."""
    paths = [
        re.sub(r"\{[^}]+\}", "x-1", path)
        for path, operations in app.openapi()["paths"].items()
        if "get" in operations and path != "/v1/log/feed"
    ]
    return [*paths, "/metrics"]


async def test_head_answers_every_get_route_as_get_does_without_a_body(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    paths = _get_paths(app)
    assert len(paths) > 15
    for path in paths:
        get, head = await client.get(path), await client.head(path)
        assert head.status_code == get.status_code, path
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        same = {k: v for k, v in get.headers.items() if k not in _VARYING}
        assert {k: v for k, v in head.headers.items() if k not in _VARYING} == same, path
        assert ("content-length" in head.headers) == ("content-length" in get.headers), path


async def test_head_has_the_content_length_of_the_get(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/streams/s-1/events", json={"events": [{"type": "A", "data": {}}]})
    assert r.status_code == 201, r.text
    get, head = (
        await client.get("/v1/streams/s-1/events"),
        await client.head("/v1/streams/s-1/events"),
    )
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))


async def test_head_on_a_path_without_get_is_405_naming_its_methods(
    client: httpx.AsyncClient,
) -> None:
    r = await client.head("/v1/runs/r-1/cancel")
    assert r.status_code == 405 and r.content == b""
    assert r.headers["Allow"] == "POST"
    assert_error(await client.delete("/v1/runs"), 405, "METHOD_NOT_ALLOWED")
    r = await client.delete("/v1/runs")
    assert r.headers["Allow"] == "GET, HEAD, POST"


async def test_the_schema_lists_no_head_twins(app: FastAPI) -> None:
    for path, operations in app.openapi()["paths"].items():
        assert "head" not in operations, path


async def test_head_on_the_live_feed_opens_no_feed(app: FastAPI, client: httpx.AsyncClient) -> None:
    r = await asyncio.wait_for(client.head("/v1/log/feed"), HANG_GUARD)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"].startswith("text/event-stream")
    for name, value in HEADERS.items():
        assert r.headers[name] == value
    assert "content-length" not in r.headers  # a stream's: none, as the GET's
    assert app.state.feeds.open == 0 and not app.state.feeds.following


@pytest.mark.parametrize("params", [{"after": 5}, {"type": "not a type!"}])
async def test_head_on_the_live_feed_refuses_what_get_refuses(
    client: httpx.AsyncClient, params: dict[str, object]
) -> None:
    get = await client.get("/v1/log/feed", params=params)
    head = await asyncio.wait_for(client.head("/v1/log/feed", params=params), HANG_GUARD)
    assert get.status_code == head.status_code == 400
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]


# -- query parameters that take one value ----------------------------------------------


async def test_a_repeated_single_valued_parameter_is_400_naming_it(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/v1/runs?status=failed&status=completed")
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert fields(error) == ["status"]
    assert error["message"] == "status: given 2 times, but it takes one value: send it once"
    assert error["details"]["errors"][0]["in"] == "query"
    # each one repeated, in the order the query names them; a parameter of a dependency too
    r = await client.get("/v1/dlq?limit=1&workspace=a&limit=2&workspace=a&stage=x")
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["limit", "workspace"]
    r = await client.get("/v1/runs?cursor=9&cursor=8&cursor=7")
    assert "given 3 times" in assert_error(r, 400, "INVALID_ARGUMENT")["message"]
    # once each, or a parameter the route does not take repeated: as before
    assert (await client.get("/v1/runs?status=failed&limit=5")).status_code == 200
    assert (await client.get("/v1/runs?unknown=1&unknown=2")).status_code == 200


async def test_a_write_with_a_repeated_parameter_writes_nothing(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    body = {"pipeline": "memory-ingest", "input": {"text": "once"}}
    r = await client.post("/v1/runs?wait=1&wait=2", json=body)
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["wait"]
    events = {"events": [{"type": "Noted", "data": {}}]}
    r = await client.post("/v1/streams/s-1/events?workspace=a&workspace=b", json=events)
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["workspace"]
    r = await client.delete("/v1/pipelines/p?reason=a&reason=b")
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["reason"]
    assert await stack.store.head(workspace) == 0


async def test_the_feeds_type_filter_still_repeats(client: httpx.AsyncClient) -> None:
    r = await asyncio.wait_for(client.head("/v1/log/feed?type=A&type=B"), HANG_GUARD)
    assert r.status_code == 200
    r = await asyncio.wait_for(client.get("/v1/log/feed?type=A&after=1&after=2"), HANG_GUARD)
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["after"]


def _takes_many(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "array" or any(_takes_many(s) for s in schema.get("anyOf", ()))


def test_the_feeds_type_is_the_only_query_parameter_that_repeats(app: FastAPI) -> None:
    many, single = set(), set()
    for path, operations in app.openapi()["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                if parameter["in"] == "query":
                    where = many if _takes_many(parameter["schema"]) else single
                    where.add((path, parameter["name"]))
    assert many == {("/v1/log/feed", "type")}
    assert ("/v1/runs", "status") in single and ("/v1/log/feed", "after") in single


@pytest.mark.parametrize("root", ["", "/api"], ids=["at-root", "behind-a-proxy-prefix"])
async def test_every_router_is_reached_whatever_the_root_path(
    app: FastAPI, workspace: str, root: str
) -> None:
    # each router skips paths without its prefix (Router.matches): a path is still
    # routed, with or without a root path, to its route, a 405, a redirect or a 404
    transport = httpx.ASGITransport(app=app, root_path=root)
    headers = {"X-Workspace": workspace}
    async with httpx.AsyncClient(
        transport=transport, base_url=f"http://test{root}", headers=headers
    ) as client:
        for path in ("/healthz", "/v1/runs/stats", "/v1/projections", "/v1/dlq"):
            r = await client.get(path)
            assert r.status_code == 200, (path, r.text)
        appended = await client.post(
            "/v1/streams/s/events", json={"events": [{"type": "A", "data": {}}]}
        )
        assert appended.status_code == 201, appended.text
        assert (await client.head("/v1/runs/stats")).status_code == 200
        assert_error(await client.delete("/v1/runs"), 405, "METHOD_NOT_ALLOWED")
        assert_error(await client.get("/v1/runsx"), 404, "NOT_FOUND")
        assert_error(await client.get("/"), 404, "NOT_FOUND")
        slash = await client.get("/v1/runs/", follow_redirects=False)
        assert slash.status_code == 307
        assert slash.headers["location"] == f"http://test{root}/v1/runs"
