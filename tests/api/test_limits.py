"""Numbers and text no store can hold are a 400 with nothing appended, never a 500."""

from __future__ import annotations

import httpx
import pytest
from api_helpers import submit

from stageline.api.limits import nests_within
from stageline.stack import Stack

HUGE = str(2**64)


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "/v1/log", {"after": HUGE}),
        ("GET", "/v1/runs", {"min_position": HUGE}),
        ("GET", "/v1/streams/s1/events", {"from_version": HUGE}),
    ],
)
async def test_positions_past_any_log_are_400(
    client: httpx.AsyncClient, method: str, path: str, params: dict[str, str]
) -> None:
    reply = await client.request(method, path, params=params)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "INVALID_ARGUMENT"


# a lone surrogate is valid JSON ("\ud800") but no UTF-8 encoder accepts it
SURROGATE = '"\\ud800"'


async def test_unencodable_text_in_events_is_400_and_appends_nothing(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    body = '{"events": [{"type": "Noted", "data": {"t": ' + SURROGATE + "}}]}"
    reply = await client.post(
        "/v1/streams/s1/events", content=body, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400, reply.text
    assert await stack.store.head(workspace) == 0


async def test_unencodable_run_input_is_400_and_appends_nothing(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    body = '{"pipeline": "memory-ingest", "input": {"text": ' + SURROGATE + "}}"
    reply = await client.post(
        "/v1/runs", content=body, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400, reply.text
    assert await stack.store.head(workspace) == 0


def test_nesting_is_counted_in_objects_and_arrays() -> None:
    assert nests_within(1, 0) and nests_within({}, 1) and nests_within({"a": [], "b": 2}, 2)
    assert not nests_within({}, 0)
    assert not nests_within({"a": 1, "b": [[]]}, 2)
    assert nests_within({"a": [{"b": "deep"}]}, 3)
    assert not nests_within([{"a": [{}]}], 3)


@pytest.mark.parametrize("cursor", ["9999999999999999999", str(2**63), str(2**53 + 1)])
async def test_a_run_cursor_past_any_position_lists_from_the_newest(
    client: httpx.AsyncClient, cursor: str
) -> None:
    # the query layer compares it as a number past int64 too: the first page, not an error
    run = (await submit(client, wait=10)).json()
    reply = await client.get("/v1/runs", params={"cursor": cursor, "min_position": run["seq"]})
    assert reply.status_code == 200, reply.text
    assert [r["id"] for r in reply.json()["runs"]] == [run["id"]]
