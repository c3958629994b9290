"""``/v1/entities``: mention counts, most mentioned first, a page at a time."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from api_helpers import HANG_GUARD, Projecting, assert_error, fields, head

from stageline.actors.builtin.memory import EntityMentioned, EntityMentionRetracted
from stageline.events import new_event
from stageline.stack import Stack

# (name, type, mentions): ties on the count, and on the count and the name
MENTIONED = [
    ("Zed", "person", 1),
    ("Bob", "person", 2),
    ("Éa", "person", 1),
    ("Ada", "person", 3),
    ("Bob", "org", 2),
    ("Cy", "person", 2),
    ("Dee", "x/y", 1),
]
LISTED = [
    ("Ada", "person", 3),
    ("Bob", "org", 2),
    ("Bob", "person", 2),
    ("Cy", "person", 2),
    ("Dee", "x/y", 1),
    ("Zed", "person", 1),
    ("Éa", "person", 1),  # by code point: É after Z
]


async def mention(stack: Stack, workspace: str) -> int:
    """Append ``MENTIONED``'s mentions, and one of an entity then retracted (listed: never)."""
    events = [
        new_event(EntityMentioned(entity=name, entity_type=t, surface=name, start=0, end=1))
        for name, t, n in MENTIONED
        for _ in range(n)
    ]
    gone = EntityMentioned(entity="Gone", entity_type="person", surface="Gone", start=0, end=4)
    events.append(new_event(gone))
    events.append(
        new_event(EntityMentionRetracted(compensates="x", entity="Gone", entity_type="person"))
    )
    await stack.store.append(workspace, "notes-1", events)
    return await stack.store.head(workspace)


async def page(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/entities", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"entities", "next_cursor"}
    return body


def rows(body: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(e["name"], e["type"], e["mentions"]) for e in body["entities"]]


async def pages(client: httpx.AsyncClient, at: int, limit: int) -> list[list[tuple[str, str, int]]]:
    """Each page of the list, following ``next_cursor`` to the end."""
    out = []
    cursor = None
    while True:
        params: dict[str, Any] = {"min_position": at, "limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        body = await page(client, **params)
        out.append(rows(body))
        cursor = body["next_cursor"]
        if cursor is None:
            return out
        assert len(out) <= len(LISTED), "the cursor does not move on"


async def test_the_list_pages_most_mentioned_first_each_entity_once(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    at = await mention(stack, workspace)
    whole = await page(client, min_position=at, limit=1000)
    assert (rows(whole), whole["next_cursor"]) == (LISTED, None)
    assert await pages(client, at, 1) == [[row] for row in LISTED]
    assert await pages(client, at, 3) == [LISTED[:3], LISTED[3:6], LISTED[6:]]
    assert await pages(client, at, 7) == [LISTED]  # a full last page: no next page
    assert await page(client, min_position=at) == whole  # 100 by default


async def test_a_cursor_outlasts_a_change_of_counts(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    at = await mention(stack, workspace)
    first = await page(client, min_position=at, limit=3)
    assert rows(first) == LISTED[:3]
    # the next page starts after Bob/person, wherever the entities moved meanwhile: Éa rises
    # above it and is not listed, Ada falls below it and is listed again (no snapshot)
    more = [("Éa", "person")] * 3 + [("Zed", "person")]
    events = [
        new_event(EntityMentioned(entity=name, entity_type=t, surface=name, start=0, end=1))
        for name, t in more
    ]
    retracted = EntityMentionRetracted(compensates="x", entity="Ada", entity_type="person")
    events += [new_event(retracted), new_event(retracted)]
    await stack.store.append(workspace, "notes-2", events)
    rest = await page(client, min_position=await head(client), cursor=first["next_cursor"])
    assert rows(rest) == [
        ("Cy", "person", 2),
        ("Zed", "person", 2),
        ("Ada", "person", 1),
        ("Dee", "x/y", 1),
    ]


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "x",
        "12",  # a run's cursor
        "!!!!",
        _cursor(b"not json"),
        _cursor(b'[2,"Bob"]'),
        _cursor(b'[true,"Bob","org"]'),
        _cursor(b'["2","Bob","org"]'),
        _cursor(b'[2, "Bob", "org"]'),  # not as the server spells it
        _cursor(b'[2,"Bob","org"]') + "=",
        _cursor(b'[9223372036854775808,"Bob","org"]'),
        _cursor(b'{"mentions":2}'),
    ],
)
async def test_a_cursor_the_server_did_not_give_is_400_before_any_wait(
    stack: Stack,
    projector: Projecting,
    workspace: str,
    make_client: Callable[..., Any],
    cursor: str,
) -> None:
    async with make_client(read_wait_seconds=HANG_GUARD) as client, projector.paused():
        at = await mention(stack, workspace)  # not applied: a read at it would wait
        async with asyncio.timeout(HANG_GUARD / 2):
            r = await client.get("/v1/entities", params={"cursor": cursor, "min_position": at})
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert fields(error) == ["cursor"]
    assert error["message"] == "cursor: invalid cursor"


async def test_a_good_cursor_is_taken_as_it_was_given(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    at = await mention(stack, workspace)
    given = (await page(client, min_position=at, limit=2))["next_cursor"]
    assert given == _cursor(b'[2,"Bob","org"]')
    assert rows(await page(client, cursor=given, limit=2)) == LISTED[2:4]
