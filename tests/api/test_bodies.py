"""A JSON body holding NaN, Infinity or a number past a float's range is a 400, whatever the
route and the field, naming each place, with nothing appended."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from stageline.api.bodies import finite_numbers, non_finite
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
