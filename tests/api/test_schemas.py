"""Submit request validation: every bad body is a 400 naming the field, and nothing is written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from api_helpers import assert_error, fields, nested, submit

from stageline.api.limits import MAX_JSON_DEPTH
from stageline.stack import Stack

TEXT = {"text": "hello"}

BAD_BODIES: list[tuple[str, Any, str]] = [
    ("body is a list", [TEXT], ""),
    ("body is a string", "hello", ""),
    ("missing pipeline", {"input": TEXT}, "pipeline"),
    ("empty pipeline", {"pipeline": "", "input": TEXT}, "pipeline"),
    ("missing input", {"pipeline": "memory-ingest"}, "input"),
    ("input not an object", {"pipeline": "memory-ingest", "input": "hi"}, "input"),
    ("missing text", {"pipeline": "memory-ingest", "input": {"id": "x"}}, "input.text"),
    ("text not a string", {"pipeline": "memory-ingest", "input": {"text": 5}}, "input.text"),
    ("text null", {"pipeline": "memory-ingest", "input": {"text": None}}, "input.text"),
    ("empty text", {"pipeline": "memory-ingest", "input": {"text": ""}}, "input.text"),
    ("blank text", {"pipeline": "memory-ingest", "input": {"text": " \n\t "}}, "input.text"),
    ("unknown input field", {"pipeline": "memory-ingest", "input": {**TEXT, "colour": 1}}, "input.colour"),
    ("unknown top-level field", {"pipeline": "memory-ingest", "input": TEXT, "x": 1}, "x"),
    ("id not a string", {"pipeline": "memory-ingest", "input": {**TEXT, "id": 7}}, "input.id"),
    ("source too long", {"pipeline": "memory-ingest", "input": {**TEXT, "source": "s" * 201}}, "input.source"),
    ("metadata not an object", {"pipeline": "memory-ingest", "input": {**TEXT, "metadata": [1]}}, "input.metadata"),
    ("metadata nested 256 deep", {"pipeline": "memory-ingest", "input": {**TEXT, "metadata": nested(256)}}, "input.metadata"),
    ("metadata nested too deep", {"pipeline": "memory-ingest", "input": {**TEXT, "metadata": {"a": nested(MAX_JSON_DEPTH)}}}, "input.metadata"),
    ("occurred_at not a date", {"pipeline": "memory-ingest", "input": {**TEXT, "occurred_at": "soon"}}, "input.occurred_at"),
    ("occurred_at without zone", {"pipeline": "memory-ingest", "input": {**TEXT, "occurred_at": "2024-01-01T10:00:00"}}, "input.occurred_at"),
    ("flaky option unknown", {"pipeline": "flaky", "input": {**TEXT, "flaky": {"times": 2}}}, "input.flaky.times"),
    ("flaky fail_times negative", {"pipeline": "flaky", "input": {**TEXT, "flaky": {"fail_times": -1}}}, "input.flaky.fail_times"),
    ("flaky sleep too long", {"pipeline": "flaky", "input": {**TEXT, "flaky": {"sleep_seconds": 61}}}, "input.flaky.sleep_seconds"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_submit_bodies_are_400_and_write_nothing(
    client: httpx.AsyncClient, stack: Stack, workspace: str, case: str, body: Any, field: str
) -> None:
    r = await client.post("/v1/runs", json=body)
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert fields(error) == [field]
    assert error["details"]["errors"][0]["in"] == "body"
    assert "input" not in error["details"]["errors"][0]  # the offending value is not echoed
    assert await stack.store.head(workspace) == 0


async def test_metadata_nested_as_deep_as_the_limit_is_kept(client: httpx.AsyncClient) -> None:
    metadata = {"a": nested(MAX_JSON_DEPTH - 1, leaf=None)}
    r = await submit(client, metadata=metadata)
    assert r.status_code == 202, r.text
    [submitted] = (
        await client.get(f"/v1/runs/{r.json()['run_id']}/events", params={"limit": 1})
    ).json()["events"]
    assert submitted["data"]["input"]["metadata"] == metadata


async def test_malformed_json_is_400_with_where_it_broke(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    r = await client.post(
        "/v1/runs",
        content=b'{"pipeline": "memory-ingest", "input": {',
        headers={"Content-Type": "application/json"},
    )
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert error["message"] == (
        "body is not JSON: Expecting property name enclosed in double quotes at line 1 column 41"
    )
    assert error["details"]["errors"][0]["type"] == "json_invalid"
    assert await stack.store.head(workspace) == 0


async def test_a_body_without_json_content_type_is_400_saying_so(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    body = b'{"pipeline": "memory-ingest", "input": {"text": "hi"}}'
    for headers in ({"Content-Type": "text/plain"}, {}):
        r = await client.post("/v1/runs", content=body, headers=headers)
        error = assert_error(r, 400, "INVALID_ARGUMENT")
        assert "application/json" in error["message"]
    r = await client.post("/v1/runs")  # no body at all
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == [""]
    assert await stack.store.head(workspace) == 0


async def test_text_longer_than_the_setting_is_400(
    make_client: Callable[..., Any], stack: Stack, workspace: str
) -> None:
    async with make_client(max_text_chars=10) as client:
        error = assert_error(await submit(client, "x" * 11), 400, "INVALID_ARGUMENT")
        assert error["details"] == {"field": "input.text", "max_chars": 10}
        assert await stack.store.head(workspace) == 0
        assert (await submit(client, "x" * 10)).status_code == 202


async def test_unknown_pipeline_is_404_naming_the_known_ones(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    r = await client.post("/v1/runs", json={"pipeline": "nope", "input": TEXT})
    error = assert_error(r, 404, "NOT_FOUND")
    assert "'nope'" in error["message"] and "memory-ingest" in error["message"]
    assert error["details"] == {"pipeline": "nope", "known": ["flaky", "memory-ingest"]}
    assert await stack.store.head(workspace) == 0


@pytest.mark.parametrize("wait", ["0", "-1", "61", "soon"])
async def test_bad_wait_is_400(
    client: httpx.AsyncClient, stack: Stack, workspace: str, wait: str
) -> None:
    r = await client.post(
        "/v1/runs", json={"pipeline": "memory-ingest", "input": TEXT}, params={"wait": wait}
    )
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert error["details"]["errors"] == [
        {"field": "wait", "in": "query", "message": error["details"]["errors"][0]["message"],
         "type": error["details"]["errors"][0]["type"]}
    ]  # fmt: skip
    assert await stack.store.head(workspace) == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "abc"}, "cursor"),
        ({"min_position": "-3"}, "min_position"),
    ],
)
async def test_bad_list_query_is_400(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    error = assert_error(await client.get("/v1/runs", params=params), 400, "INVALID_ARGUMENT")
    assert fields(error) == [field]
    assert error["message"].startswith(f"{field}: ")


async def test_a_status_error_lists_the_allowed_values(client: httpx.AsyncClient) -> None:
    error = assert_error(await client.get("/v1/runs?status=done"), 400, "INVALID_ARGUMENT")
    for status in ("processing", "completed", "failed"):
        assert status in error["message"]
