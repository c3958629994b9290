"""``/v1/log``: the workspace log by position."""

from __future__ import annotations

import httpx
import pytest
from api_helpers import assert_error, fields


async def test_the_log_pages_by_position(client: httpx.AsyncClient) -> None:
    empty = (await client.get("/v1/log")).json()
    assert empty == {"events": [], "next_after": 0, "head": 0}
    for stream in ("a", "b", "a"):
        body = {"events": [{"type": "Noted", "data": {"stream": stream}}]}
        assert (await client.post(f"/v1/streams/{stream}/events", json=body)).status_code == 201

    page = (await client.get("/v1/log", params={"limit": 2})).json()
    assert [(e["stream"], e["position"]) for e in page["events"]] == [("a", 1), ("b", 2)]
    assert page["next_after"] == 2 and page["head"] == 3
    page = (await client.get("/v1/log", params={"after": page["next_after"]})).json()
    assert [(e["stream"], e["version"], e["position"]) for e in page["events"]] == [("a", 1, 3)]
    assert page["next_after"] == 3
    page = (await client.get("/v1/log", params={"after": 3})).json()
    assert page == {"events": [], "next_after": 3, "head": 3}


async def test_a_position_past_the_head_is_400(client: httpx.AsyncClient) -> None:
    body = {"events": [{"type": "Noted", "data": {}}]}
    assert (await client.post("/v1/streams/a/events", json=body)).status_code == 201
    r = await client.get("/v1/log", params={"after": 1000})
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert error["details"] == {"after": 1000, "head": 1}
    assert (await client.get("/v1/log", params={"after": 1})).json()["head"] == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"after": -1}, "after"),
        ({"after": "x"}, "after"),
    ],
)
async def test_bad_log_query_is_400(
    client: httpx.AsyncClient, params: dict[str, object], field: str
) -> None:
    assert fields(
        assert_error(await client.get("/v1/log", params=params), 400, "INVALID_ARGUMENT")
    ) == [field]
