"""A JSON body holding NaN, Infinity or a number past a float's range is a 400, whatever the
route and the field, naming each place, with nothing appended; so is a body that is not
UTF-8 or not JSON, saying where."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from api_helpers import assert_error
from fastapi import FastAPI

from stageline.api.bodies import finite_numbers, non_finite, parse_json
from stageline.api.errors import MalformedBody
from stageline.stack import Stack

JSON = {"content-type": "application/json"}
BIG = "9" * 210 + "e99"  # no 3-digit exponent, still past a float's range


def _events(number: str) -> str:
    return '{"events": [{"type": "Noted", "data": {"a": [1, {"n": ' + number + "}]}}]}"


@pytest.mark.parametrize("number", ["1e400", "NaN", "Infinity", "-Infinity", BIG])
async def test_event_data_with_a_non_finite_number_is_400_and_appends_nothing(
    client: httpx.AsyncClient, stack: Stack, workspace: str, number: str
) -> None:
    reply = await client.post("/v1/streams/s1/events", content=_events(number), headers=JSON)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert [e["field"] for e in error["details"]["errors"]] == ["events[0].data.a[1].n"]
    assert error["message"].startswith("events[0].data.a[1].n: must be a finite number")
    assert await stack.store.head(workspace) == 0


@pytest.mark.parametrize(
    ("path", "body", "fields"),
    [
        (
            "/v1/runs",
            '{"pipeline": "memory-ingest", "input": {"text": "t", "metadata": '
            '{"x": NaN, "y": [Infinity]}}}',
            ["input.metadata.x", "input.metadata.y[0]"],
        ),
        (
            "/v1/pipelines",
            '{"name": "p", "stages": [{"name": "s", "actor": "summarize", '
            '"retry": {"backoff_seconds": 1e400}}]}',
            ["stages[0].retry.backoff_seconds"],
        ),
        (
            "/v1/ontology/patterns",
            '{"name": "Bob", "entity_type": "person", "confidence": NaN}',
            ["confidence"],
        ),
    ],
)
async def test_every_route_refuses_a_non_finite_number(
    client: httpx.AsyncClient,
    stack: Stack,
    workspace: str,
    path: str,
    body: str,
    fields: list[str],
) -> None:
    reply = await client.post(path, content=body, headers=JSON)
    assert reply.status_code == 400, reply.text
    assert [e["field"] for e in reply.json()["error"]["details"]["errors"]] == fields
    assert await stack.store.head(workspace) == 0


async def test_finite_numbers_pass(client: httpx.AsyncClient) -> None:
    body = _events("1.5e300").replace('"a"', '"e100": -1e-400, "a"')
    reply = await client.post("/v1/streams/s2/events", content=body, headers=JSON)
    assert reply.status_code == 201, reply.text


def test_non_finite_names_every_place() -> None:
    value = json.loads('{"a": [1, NaN, {"b": 1e400}], "c": -Infinity, "d": 1.5, "e": "NaN"}')
    assert list(non_finite(value)) == [("a", 1), ("a", 2, "b"), ("c",)]
    assert list(non_finite(math.inf)) == [()]


def test_every_route_depends_on_the_check(client: httpx.AsyncClient) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    assert any(d.dependency is finite_numbers for d in app.router.dependencies)


# every route that takes a body, a path of it (each is one the schema lists with a body)
BODY_ROUTES = [
    ("POST", "/v1/runs"),
    ("POST", "/v1/runs/r-1/cancel"),
    ("POST", "/v1/streams/s-1/events"),
    ("POST", "/v1/pipelines"),
    ("PUT", "/v1/pipelines/p-1"),
    ("POST", "/v1/ontology/patterns"),
    ("POST", "/v1/ontology/import"),
]
BAD_BODIES = [
    # latin-1, not UTF-8: the é of "café" is one byte, 0xe9, the 11th
    (b'{"text": "caf\xe9"}', "body is not UTF-8 at byte 13", {"byte": 13}),
    (b'{"text": \n  "x"\n  "y"}', "body is not JSON: Expecting ',' delimiter at line 3 column 3",
     {"line": 3, "column": 3}),
    (b"{\n  \n  oops", "body is not JSON: Expecting property name enclosed in double quotes "
     "at line 3 column 3", {"line": 3, "column": 3}),
]  # fmt: skip


def test_body_routes_are_every_route_the_schema_lists_with_a_body(app: FastAPI) -> None:
    listed = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    templates = {
        (
            method,
            path.replace("r-1", "{run_id}").replace("s-1", "{stream}").replace("p-1", "{name}"),
        )
        for method, path in BODY_ROUTES
    }
    assert templates == listed


@pytest.mark.parametrize(("body", "message", "where"), BAD_BODIES, ids=["latin-1", "json", "json3"])
@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
async def test_a_body_not_utf8_or_not_json_is_400_saying_where(
    client: httpx.AsyncClient,
    stack: Stack,
    workspace: str,
    method: str,
    path: str,
    body: bytes,
    message: str,
    where: dict[str, int],
) -> None:
    reply = await client.request(method, path, content=body, headers=JSON)
    error = assert_error(reply, 400, "INVALID_ARGUMENT")
    assert error["message"] == message
    [item] = error["details"]["errors"]
    assert item == {"field": "", "in": "body", "message": message, "type": item["type"], **where}
    assert await stack.store.head(workspace) == 0


def test_parse_json_takes_utf8_json_and_a_byte_order_mark() -> None:
    assert parse_json('{"a": "café"}'.encode()) == {"a": "café"}
    assert parse_json(b"\xef\xbb\xbf[1]") == [1]
    with pytest.raises(MalformedBody, match="not UTF-8 at byte 0"):
        parse_json("[1]".encode("utf-16"))
