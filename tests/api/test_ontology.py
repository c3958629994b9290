"""``/v1/ontology``: patterns added, overridden, removed, listed; status; export and import."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import assert_error, fields, run_events, served, submit
from fastapi import FastAPI
from typer.testing import CliRunner, Result

from stageline.api.ontology import merge_patterns
from stageline.cli import app as cli_app
from stageline.events.keys import GLOBAL_WORKSPACE
from stageline.ontology.model import pattern_id
from stageline.ontology.seed import seed_document
from stageline.stack import Stack

SOURCES = ("seed", "discovered", "promoted", "manual")
SEED_TYPES = len(seed_document().types)
SEED_PATTERNS = len(seed_document().patterns)
ALICE = pattern_id("Alice", "person")
JSON = {"Content-Type": "application/json"}


def client_of(app: FastAPI, workspace: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    headers = {"X-Workspace": workspace}
    return httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers)


def unique_name() -> str:
    """A surface text no other test's text contains (global patterns are matched everywhere)."""
    return f"Zq{uuid.uuid4().hex[:10]}"


async def add(
    client: httpx.AsyncClient, name: str, entity_type: str = "technology", **extra: Any
) -> dict[str, Any]:
    body = {"name": name, "entity_type": entity_type, **extra}
    r = await client.post("/v1/ontology/patterns", json=body)
    assert r.status_code == 201, r.text
    written: dict[str, Any] = r.json()
    return written


async def remove(client: httpx.AsyncClient, pid: str, *, is_global: bool = False) -> httpx.Response:
    params = {"global": "true"} if is_global else {}
    return await client.delete(f"/v1/ontology/patterns/{pid}", params=params)


async def listed(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/ontology/patterns", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"patterns", "stats_by_source", "next_cursor"}
    return body


def by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in body["patterns"]}


async def export(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/v1/ontology/export")
    assert r.status_code == 200, r.text
    document: dict[str, Any] = r.json()
    return document


async def ontology_events(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await client.get("/v1/streams/ontology/events", params={"limit": 1000})
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


async def status(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/ontology/status", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def matched_in_a_run(client: httpx.AsyncClient, stack: Stack, text: str) -> set[str]:
    """The ids of the patterns a memory-ingest run of ``text`` matched."""
    await asyncio.sleep(stack.ontology.refresh_s)  # the stages' view of the ontology is this old
    r = await submit(client, text, wait=20)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed", r.text
    events = await run_events(client, r.json()["id"])
    return {e["data"]["pattern_id"] for e in events if e["type"] == "PatternMatched"}


@asynccontextmanager
async def global_pattern(client: httpx.AsyncClient, name: str) -> AsyncIterator[dict[str, Any]]:
    """A global pattern for the duration of the block (every workspace matches it)."""
    written = await add(client, name, "technology", is_global=True)
    try:
        yield written
    finally:
        await remove(client, written["pattern_id"], is_global=True)


# -- add, override ---------------------------------------------------------------------


async def test_adding_a_pattern_seeds_the_workspace_then_appends_it(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    r = await client.post(
        "/v1/ontology/patterns", json={"name": "Zanzibar DB", "entity_type": "technology"}
    )
    assert r.status_code == 201, r.text
    written = r.json()
    assert set(written) == {"pattern_id", "workspace", "position"}
    assert written["pattern_id"] == pattern_id("Zanzibar DB", "technology")
    assert written["workspace"] == workspace
    assert written["position"] == await stack.store.head(workspace)

    events = await ontology_events(client)
    assert len(events) == SEED_TYPES + SEED_PATTERNS + 1  # the seed came first
    last = events[-1]
    assert last["type"] == "PatternAdded"
    assert last["position"] == written["position"]
    assert last["correlation_id"] == r.headers["X-Correlation-ID"]
    assert last["data"] | {"run_id": None} == {
        "pattern_id": written["pattern_id"],
        "name": "Zanzibar DB",
        "entity_type": "technology",
        "confidence": 1.0,
        "source": "manual",
        "is_global": False,
        "run_id": None,
    }


async def test_a_pattern_of_a_new_type_adds_the_type_confirmed(
    client: httpx.AsyncClient,
) -> None:
    written = await add(client, "Operator SDK", "tooling", confidence=0.7)
    events = await ontology_events(client)
    assert [e["type"] for e in events[-2:]] == ["EntityTypeAdded", "PatternAdded"]
    assert events[-2]["data"] == {"name": "tooling", "status": "confirmed"}
    assert events[-1]["data"]["confidence"] == 0.7
    document = await export(client)
    assert {"name": "tooling", "status": "confirmed"} in document["types"]
    assert {
        "name": "Operator SDK",
        "entity_type": "tooling",
        "confidence": 0.7,
        "source": "manual",
    } in document["patterns"]
    assert written["pattern_id"] == pattern_id("operator sdk", "tooling")


async def test_adding_again_overrides_the_pattern_seed_ones_too(
    client: httpx.AsyncClient,
) -> None:
    first = await add(client, "Zanzibar DB", confidence=0.9)
    again = await add(client, "zanzibar db", confidence=0.5)  # any case: the same pattern
    assert again["pattern_id"] == first["pattern_id"]
    assert again["position"] > first["position"]
    alice = await add(client, "Alice", "person", confidence=0.6)
    assert alice["pattern_id"] == ALICE
    patterns = {
        (p["name"].casefold(), p["entity_type"]): p for p in (await export(client))["patterns"]
    }
    assert patterns[("zanzibar db", "technology")]["confidence"] == 0.5
    assert patterns[("alice", "person")] == {
        "name": "Alice",
        "entity_type": "person",
        "confidence": 0.6,
        "source": "manual",
    }
    assert len(patterns) == SEED_PATTERNS + 1


BAD_PATTERNS: list[tuple[str, dict[str, Any], str]] = [
    ("empty name", {"name": "", "entity_type": "person"}, "name"),
    ("blank name", {"name": "   ", "entity_type": "person"}, "name"),
    ("surrounding spaces", {"name": " Bob ", "entity_type": "person"}, "name"),
    ("control character", {"name": "Bo\nb", "entity_type": "person"}, "name"),
    ("long name", {"name": "x" * 101, "entity_type": "person"}, "name"),
    ("upper-case type", {"name": "Bob", "entity_type": "Person"}, "entity_type"),
    ("type with a space", {"name": "Bob", "entity_type": "a type"}, "entity_type"),
    ("confidence 2", {"name": "Bob", "entity_type": "person", "confidence": 2}, "confidence"),
    (
        "negative confidence",
        {"name": "Bob", "entity_type": "person", "confidence": -0.1},
        "confidence",
    ),
    (
        "confidence as text",
        {"name": "Bob", "entity_type": "person", "confidence": "high"},
        "confidence",
    ),
    ("name as a number", {"name": 5, "entity_type": "person"}, "name"),
    ("global as text", {"name": "Bob", "entity_type": "person", "is_global": "yes"}, "is_global"),
    ("no type", {"name": "Bob"}, "entity_type"),
    ("unknown field", {"name": "Bob", "entity_type": "person", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_PATTERNS, ids=[c[0] for c in BAD_PATTERNS])
@pytest.mark.parametrize("is_global", [False, True], ids=["workspace", "global"])
async def test_bad_patterns_are_400_and_append_nothing(
    client: httpx.AsyncClient,
    stack: Stack,
    workspace: str,
    case: str,
    body: dict[str, Any],
    field: str,
    is_global: bool,
) -> None:
    global_head = await stack.store.head(GLOBAL_WORKSPACE)
    if is_global and "is_global" not in body:
        body = {**body, "is_global": True}
    r = await client.post("/v1/ontology/patterns", json=body)
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    details = error["details"]
    assert details.get("field") == field or field in fields(error), error
    assert await stack.store.head(workspace) == 0
    assert await stack.store.head(GLOBAL_WORKSPACE) == global_head


async def test_a_body_that_is_not_an_object_is_400(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    r = await client.post("/v1/ontology/patterns", json=["Bob", "person"])
    assert_error(r, 400, "INVALID_ARGUMENT")
    r = await client.post("/v1/ontology/patterns", content=b'{"name": "Bob",', headers=JSON)
    assert "body is not JSON" in assert_error(r, 400, "INVALID_ARGUMENT")["message"]
    assert await stack.store.head(workspace) == 0


# -- remove --------------------------------------------------------------------------


async def test_removing_a_pattern_then_again_is_404(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    written = await add(client, "Zanzibar DB")
    pid = written["pattern_id"]
    r = await remove(client, pid)
    assert r.status_code == 200, r.text
    removed = r.json()
    assert removed == {
        "pattern_id": pid,
        "workspace": workspace,
        "position": await stack.store.head(workspace),
    }
    last = (await ontology_events(client))[-1]
    assert (last["type"], last["data"]) == (
        "PatternRemoved",
        {"pattern_id": pid, "reason": "removed by hand"},
    )
    assert ("Zanzibar DB", "technology") not in {
        (p["name"], p["entity_type"]) for p in (await export(client))["patterns"]
    }

    error = assert_error(await remove(client, pid), 404, "NOT_FOUND")
    assert error["details"]["pattern_id"] == pid
    assert await stack.store.head(workspace) == removed["position"]

    again = await add(client, "Zanzibar DB")  # adding it back makes it active again
    assert (await remove(client, again["pattern_id"])).status_code == 200


async def test_removing_unknown_or_malformed_ids(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    assert_error(await remove(client, str(uuid.uuid4())), 404, "NOT_FOUND")
    head = await stack.store.head(workspace)
    assert head == SEED_TYPES + SEED_PATTERNS  # a first write seeds the workspace, nothing more
    assert_error(await remove(client, "not-an-id"), 400, "INVALID_ARGUMENT")
    assert_error(await remove(client, ALICE.upper()), 400, "INVALID_ARGUMENT")
    # a workspace's pattern is not a global one
    written = await add(client, "Zanzibar DB")
    error = assert_error(
        await remove(client, written["pattern_id"], is_global=True), 404, "NOT_FOUND"
    )
    assert "global" in error["message"]
    r = await client.delete(f"/v1/ontology/patterns/{ALICE}", params={"global": "maybe"})
    assert_error(r, 400, "INVALID_ARGUMENT")
    assert await stack.store.head(workspace) == written["position"]


async def test_a_seed_pattern_can_be_removed_and_is_matched_no_more(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    assert ALICE in await matched_in_a_run(client, stack, "Alice met Bob.")
    r = await remove(client, ALICE)
    assert r.status_code == 200, r.text
    assert ALICE not in await matched_in_a_run(client, stack, "Alice met Bob.")
    assert "Alice" not in {p["name"] for p in (await export(client))["patterns"]}


# -- workspaces and global patterns ----------------------------------------------------


async def test_a_workspace_pattern_is_matched_in_that_workspace_only(
    client: httpx.AsyncClient, app: FastAPI, stack: Stack, workspace: str
) -> None:
    name = unique_name()
    written = await add(client, name)
    pid = written["pattern_id"]
    text = f"We moved the cache to {name} last week."
    assert pid in await matched_in_a_run(client, stack, text)
    async with client_of(app, f"{workspace}-b") as other:
        assert pid not in await matched_in_a_run(other, stack, text)
        assert name not in {p["name"] for p in (await export(other))["patterns"]}
        assert_error(await remove(other, pid), 404, "NOT_FOUND")
    assert name in {p["name"] for p in (await export(client))["patterns"]}


async def test_a_global_pattern_is_matched_everywhere_unless_hidden(
    client: httpx.AsyncClient, app: FastAPI, stack: Stack, workspace: str
) -> None:
    name = unique_name()
    text = f"The team adopted {name} for tracing."
    async with (
        global_pattern(client, name) as written,
        client_of(app, f"{workspace}-b") as other,
    ):
        pid = written["pattern_id"]
        assert written["workspace"] == GLOBAL_WORKSPACE
        assert written["position"] == await stack.store.head(GLOBAL_WORKSPACE)
        assert await stack.store.head(workspace) == 0  # nothing written in the workspace
        assert pid in await matched_in_a_run(client, stack, text)
        assert pid in await matched_in_a_run(other, stack, text)
        events = await run_events(client, (await submit(client, text, wait=20)).json()["id"])
        match = next(e for e in events if e["type"] == "PatternMatched")
        assert (match["data"]["is_global"], match["data"]["source"]) == (True, "manual")
        # not part of a workspace's document
        assert name not in {p["name"] for p in (await export(client))["patterns"]}

        hidden = await remove(client, pid)  # hides it from this workspace only
        assert hidden.status_code == 200, hidden.text
        assert hidden.json()["workspace"] == workspace
        assert pid not in await matched_in_a_run(client, stack, text)
        assert pid in await matched_in_a_run(other, stack, text)
        assert_error(await remove(client, pid), 404, "NOT_FOUND")

    # gone for everyone: removing it again is 404
    assert_error(await remove(client, pid, is_global=True), 404, "NOT_FOUND")
    async with client_of(app, f"{workspace}-b") as other:
        assert pid not in await matched_in_a_run(other, stack, text)


# -- export and import -----------------------------------------------------------------


async def test_export_then_import_into_a_fresh_workspace_gives_the_same_document(
    client: httpx.AsyncClient, app: FastAPI, stack: Stack, workspace: str
) -> None:
    await add(client, "Operator SDK", "tooling", confidence=0.7)
    await add(client, "Bob", "person", confidence=0.4)
    assert (await remove(client, ALICE)).status_code == 200
    document = await export(client)
    assert (document["format"], document["version"]) == ("stageline.ontology", 1)
    assert set(document) == {"format", "version", "types", "patterns"}
    assert len(document["patterns"]) == SEED_PATTERNS + 1 - 1
    assert len(document["types"]) == SEED_TYPES + 1

    fresh = f"{workspace}-copy"
    async with client_of(app, fresh) as other:
        r = await other.post("/v1/ontology/import", json=document)
        assert r.status_code == 200, r.text
        assert r.json() == {"workspace": fresh, "position": await stack.store.head(fresh)}
        events = await ontology_events(other)
        assert [e["type"] for e in events] == ["OntologyImported"]  # no seed first
        assert events[0]["correlation_id"] == r.headers["X-Correlation-ID"]
        assert await export(other) == document
        again = await other.post("/v1/ontology/import", json=document)
        assert again.status_code == 200 and again.json()["position"] > r.json()["position"]
        assert await export(other) == document
    assert await export(client) == document  # the source is untouched


async def test_an_import_replaces_the_whole_ontology(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    await add(client, "Zanzibar DB")
    small = {
        "format": "stageline.ontology",
        "version": 1,
        "types": [{"name": "person", "status": "confirmed"}, {"name": "robot"}],
        "patterns": [{"name": "R2-D2", "entity_type": "robot"}],
    }
    r = await client.post("/v1/ontology/import", json=small)
    assert r.status_code == 200, r.text
    assert await export(client) == {
        "format": "stageline.ontology",
        "version": 1,
        "types": [
            {"name": "person", "status": "confirmed"},
            {"name": "robot", "status": "provisional"},
        ],
        "patterns": [
            {"name": "R2-D2", "entity_type": "robot", "confidence": 0.9, "source": "manual"}
        ],
    }
    matched = await matched_in_a_run(client, stack, "Alice met R2-D2 in Berlin.")
    assert matched == {pattern_id("R2-D2", "robot")}  # the seed patterns are gone


def document_with(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(
        {
            "format": "stageline.ontology",
            "version": 1,
            "types": [{"name": "person", "status": "seed"}, {"name": "old", "status": "rejected"}],
            "patterns": [{"name": "Alice", "entity_type": "person", "confidence": 0.9}],
        }
    )
    document.update(changes)
    return document


def patterns_with(*extra: dict[str, Any], **changes: Any) -> list[dict[str, Any]]:
    first = {"name": "Alice", "entity_type": "person", "confidence": 0.9, **changes}
    return [first, *extra]


BAD_DOCUMENTS: list[tuple[str, Any, str]] = [
    ("wrong format", document_with(format="something.else"), "format"),
    ("no format", {k: v for k, v in document_with().items() if k != "format"}, "format"),
    ("wrong version", document_with(version=2), "version"),
    ("version as text", document_with(version="1"), "version"),
    (
        "pattern of a missing type",
        document_with(patterns=patterns_with(entity_type="robot")),
        "patterns[0].entity_type",
    ),
    (
        "pattern of a rejected type",
        document_with(patterns=patterns_with(entity_type="old")),
        "patterns[0].entity_type",
    ),
    ("confidence 2", document_with(patterns=patterns_with(confidence=2)), "patterns[0].confidence"),
    (
        "negative confidence",
        document_with(patterns=patterns_with(confidence=-1)),
        "patterns[0].confidence",
    ),
    (
        "duplicate pattern",
        document_with(patterns=patterns_with({"name": "ALICE", "entity_type": "person"})),
        "patterns[1].name",
    ),
    (
        "repeated type",
        document_with(types=[{"name": "person"}, {"name": "person", "status": "confirmed"}]),
        "types[1].name",
    ),
    ("bad type name", document_with(types=[{"name": "Person"}], patterns=[]), "types[0].name"),
    ("blank pattern name", document_with(patterns=patterns_with(name=" ")), "patterns[0].name"),
    ("unknown field", document_with(owner="me"), "owner"),
    ("unknown pattern field", document_with(patterns=patterns_with(colour="red")), "colour"),
    ("unknown source", document_with(patterns=patterns_with(source="guessed")), "source"),
    ("types not a list", document_with(types="person"), "types"),
]


@pytest.mark.parametrize(
    ("case", "document", "field"), BAD_DOCUMENTS, ids=[c[0] for c in BAD_DOCUMENTS]
)
async def test_invalid_documents_are_400_naming_the_field_and_append_nothing(
    client: httpx.AsyncClient,
    stack: Stack,
    workspace: str,
    case: str,
    document: Any,
    field: str,
) -> None:
    r = await client.post("/v1/ontology/import", json=document)
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert error["details"].get("field") == field or field in error["message"], error
    assert await stack.store.head(workspace) == 0


async def test_an_invalid_import_leaves_an_existing_ontology_as_it_was(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    before = await export(client)  # seeds the workspace
    head = await stack.store.head(workspace)
    assert head == SEED_TYPES + SEED_PATTERNS
    bad = copy.deepcopy(before)
    bad["patterns"][-1]["confidence"] = 2
    error = assert_error(
        await client.post("/v1/ontology/import", json=bad), 400, "INVALID_ARGUMENT"
    )
    assert error["details"]["field"] == f"patterns[{len(bad['patterns']) - 1}].confidence"
    for body in ([before], "a string", None):
        assert_error(await client.post("/v1/ontology/import", json=body), 400, "INVALID_ARGUMENT")
    r = await client.post("/v1/ontology/import", content=b'{"format": ', headers=JSON)
    assert "body is not JSON" in assert_error(r, 400, "INVALID_ARGUMENT")["message"]
    assert await stack.store.head(workspace) == head
    assert await export(client) == before


# -- reads from the views: patterns and status ------------------------------------------


async def test_patterns_are_listed_with_their_stats_and_counts_by_source(
    client: httpx.AsyncClient,
) -> None:
    await add(client, "Zanzibar DB", confidence=0.9)
    tooling = await add(client, "Operator SDK", "tooling")
    again = await add(client, "zanzibar db", confidence=0.5)
    body = await listed(client, min_position=again["position"], limit=1000)
    assert body["stats_by_source"] == {
        "seed": SEED_PATTERNS,
        "discovered": 0,
        "promoted": 0,
        "manual": 2,
    }
    rows = by_id(body)
    assert len(rows) == SEED_PATTERNS + 2
    row = rows[again["pattern_id"]]
    assert set(row) == {
        "id",
        "name",
        "entity_type",
        "source",
        "confidence",
        "is_global",
        "active",
        "removed_reason",
        "matches",
        "runs_matched",
        "first_seen",
        "last_seen",
    }
    assert (row["entity_type"], row["source"], row["confidence"]) == ("technology", "manual", 0.5)
    assert (row["is_global"], row["active"], row["removed_reason"]) == (False, True, None)
    assert (row["matches"], row["runs_matched"], row["first_seen"], row["last_seen"]) == (
        0,
        0,
        None,
        None,
    )

    manual = await listed(client, source="manual")
    assert set(by_id(manual)) == {again["pattern_id"], tooling["pattern_id"]}
    assert manual["stats_by_source"] == body["stats_by_source"]  # counts are not filtered
    assert set(by_id(await listed(client, entity_type="tooling"))) == {tooling["pattern_id"]}
    seeds = await listed(client, source="seed", limit=1000)
    assert len(seeds["patterns"]) == SEED_PATTERNS
    assert {p["source"] for p in seeds["patterns"]} == {"seed"}
    assert len((await listed(client, limit=5))["patterns"]) == 5


async def test_matches_are_counted_and_listed_most_matched_first(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    r = await submit(client, "Alice met Bob, then Alice called Carol.", wait=20)
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    body = await listed(client, min_position=await head_of(client))
    first = body["patterns"][0]
    assert (first["id"], first["matches"], first["runs_matched"]) == (ALICE, 2, 1)
    assert first["first_seen"] is not None and first["last_seen"] is not None
    matches = [p["matches"] for p in body["patterns"]]
    assert matches == sorted(matches, reverse=True)


async def test_undo_of_a_run_takes_its_matches_back(client: httpx.AsyncClient) -> None:
    first = (await submit(client, "Alice met Bob.", wait=20)).json()
    second = (await submit(client, "Alice called Alice.", wait=20)).json()
    assert first["status"] == second["status"] == "completed"
    row = by_id(await listed(client, min_position=await head_of(client), limit=1000))[ALICE]
    assert (row["matches"], row["runs_matched"]) == (3, 2)

    r = await client.post(f"/v1/runs/{second['id']}/undo")
    assert r.status_code == 200, r.text
    row = by_id(await listed(client, min_position=r.json()["position"], limit=1000))[ALICE]
    assert (row["matches"], row["runs_matched"]) == (1, 1)
    total = (await status(client, min_position=r.json()["position"]))["totals"]["mentions"]
    assert total == 2  # Alice and Bob of the first run


async def head_of(client: httpx.AsyncClient) -> int:
    r = await client.get("/v1/log", params={"after": 0, "limit": 1})
    assert r.status_code == 200, r.text
    position: int = r.json()["head"]
    return position


async def test_removed_patterns_are_listed_only_when_asked(
    client: httpx.AsyncClient,
) -> None:
    written = await add(client, "Zanzibar DB")
    r = await remove(client, written["pattern_id"])
    position = r.json()["position"]
    body = await listed(client, min_position=position, limit=1000)
    assert written["pattern_id"] not in by_id(body)
    assert body["stats_by_source"]["manual"] == 0
    row = by_id(await listed(client, include_removed="true", limit=1000))[written["pattern_id"]]
    assert (row["active"], row["removed_reason"]) == (False, "removed by hand")


async def test_workspaces_never_list_each_others_patterns(
    client: httpx.AsyncClient, app: FastAPI, workspace: str
) -> None:
    written = await add(client, unique_name())
    assert written["pattern_id"] in by_id(await listed(client, min_position=written["position"]))
    async with client_of(app, f"{workspace}-b") as other:
        mine = await add(other, "Operator SDK", "tooling")
        body = await listed(other, min_position=mine["position"], limit=1000)
        assert written["pattern_id"] not in by_id(body)
        assert body["stats_by_source"]["manual"] == 1
    assert mine["pattern_id"] not in by_id(await listed(client, limit=1000))


async def test_a_global_pattern_is_listed_in_every_workspace(
    client: httpx.AsyncClient, app: FastAPI, stack: Stack, workspace: str
) -> None:
    name = unique_name()
    async with (
        global_pattern(client, name) as written,
        client_of(app, f"{workspace}-b") as other,
    ):
        pid = written["pattern_id"]
        for c in (client, other):
            body = await listed(c, min_global_position=written["position"], limit=1000)
            row = by_id(body)[pid]
            assert (row["name"], row["is_global"], row["source"], row["active"]) == (
                name,
                True,
                "manual",
                True,
            )
            assert body["stats_by_source"]["manual"] == 0  # the workspace's own only

        # a workspace pattern with its id overrides it there
        own = await add(client, name, "technology", confidence=0.3)
        assert own["pattern_id"] == pid
        row = by_id(await listed(client, min_position=own["position"], limit=1000))[pid]
        assert (row["is_global"], row["confidence"]) == (False, 0.3)
        assert by_id(await listed(other, limit=1000))[pid]["is_global"] is True

        # hidden from one workspace, still listed in the other
        hidden = await remove(other, pid)
        assert hidden.status_code == 200, hidden.text
        assert pid not in by_id(await listed(other, min_position=hidden.json()["position"]))
        assert pid in by_id(await listed(client, limit=1000))

    global_head = await stack.store.head(GLOBAL_WORKSPACE)
    row = by_id(await listed(client, min_global_position=global_head, limit=1000))[pid]
    assert (row["is_global"], row["active"]) == (False, True)  # the workspace's override stays


async def pattern_pages(client: httpx.AsyncClient, **params: Any) -> list[list[dict[str, Any]]]:
    """Each page of the list, following ``next_cursor`` to the end."""
    out: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        body = await listed(client, **params, **({} if cursor is None else {"cursor": cursor}))
        out.append(body["patterns"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out
        assert len(out) < 100, "the cursor does not move on"


async def test_the_list_pages_through_own_and_global_patterns_each_once(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    # a global pattern sorts by its matches in the workspace: "Zz..." is matched most, and
    # sorts by name after the global patterns matched less
    few, most, once = unique_name(), "Zz" + unique_name(), unique_name()
    mine = [unique_name() for _ in range(3)]
    for name in mine:
        await add(client, name)
    async with (
        global_pattern(client, few),
        global_pattern(client, most) as top,
        global_pattern(client, once) as second,
    ):
        text = f"{most} beat {once}, then {most} met {mine[0]}."
        matched = await matched_in_a_run(client, stack, text)
        assert {top["pattern_id"], second["pattern_id"], pattern_id(mine[0], "technology")} == (
            matched
        )
        at = {"min_position": await head_of(client), "min_global_position": second["position"]}
        first = await listed(client, **at, limit=1)
        assert [(p["id"], p["matches"]) for p in first["patterns"]] == [(top["pattern_id"], 2)]
        whole = await listed(client, **at, limit=1000)
        assert whole["next_cursor"] is None
        everything = whole["patterns"]
        assert len(everything) == SEED_PATTERNS + 3 + 3
        order = [(-p["matches"], p["name"], p["id"]) for p in everything]
        assert order == sorted(order)
        assert (everything[0]["id"], everything[0]["matches"]) == (top["pattern_id"], 2)

        for limit in (1, 4, len(everything)):
            pages = await pattern_pages(client, **at, limit=limit)
            assert [p for page in pages for p in page] == everything, limit
            assert all(len(page) == limit for page in pages[:-1])
        manual = await pattern_pages(client, **at, source="manual", limit=2)
        assert [p["id"] for page in manual for p in page] == [
            p["id"] for p in everything if p["source"] == "manual"
        ]


def row(pid: str, name: str, *, is_global: bool = False, matches: int = 0) -> dict[str, Any]:
    return {
        "id": pid,
        "name": name,
        "entity_type": "technology",
        "source": "manual",
        "confidence": 1.0,
        "is_global": is_global,
        "active": True,
        "removed_reason": None,
        "matches": matches,
        "runs_matched": 1 if matches else 0,
        "first_seen": "2026-03-01T00:00:00.000Z" if matches else None,
        "last_seen": "2026-03-02T00:00:00.000Z" if matches else None,
    }


def test_the_list_merges_global_patterns_under_the_workspace_ones() -> None:
    own = [
        row("a", "Alpha", matches=1),
        row("o", "Overridden", matches=5),  # the workspace's own, over a global one
        row("g1", "Global one", is_global=True, matches=3),  # local stats of a global one
        row("h", "Hidden", is_global=True, matches=9) | {"active": False},  # hidden here
    ]
    shared = [
        row("o", "Overridden (global)", is_global=True),
        row("g1", "Global one", is_global=True),
        row("g2", "Global two", is_global=True),
        row("h", "Hidden", is_global=True),
    ]
    merged, last = merge_patterns(own, shared, {"a", "o", "h"}, 100)
    assert [(r["id"], r["is_global"], r["matches"]) for r in merged] == [
        ("h", True, 9),  # the workspace's own node of it (listed with include_removed)
        ("o", False, 5),
        ("g1", True, 3),
        ("a", False, 1),
        ("g2", True, 0),
    ]
    assert last is None
    g1 = next(r for r in merged if r["id"] == "g1")
    assert (g1["runs_matched"], g1["first_seen"]) == (1, "2026-03-01T00:00:00.000Z")
    page, last = merge_patterns(own, shared, {"a", "o", "h"}, 2)
    assert ([r["id"] for r in page], last) == (["h", "o"], (5, "Overridden", "o"))
    page, last = merge_patterns(own, shared, {"a", "o", "h"}, 2, last)
    assert ([r["id"] for r in page], last) == (["g1", "a"], (1, "Alpha", "a"))
    page, last = merge_patterns(own, shared, {"a", "o", "h"}, 2, last)
    assert ([r["id"] for r in page], last) == (["g2"], None)
    assert merge_patterns([], shared, set(), 100)[0][0]["name"] == "Global one"


def test_patterns_of_one_name_and_count_are_ordered_by_id() -> None:
    own = [row(pid, "Same", matches=2) for pid in ("c", "a", "b")]
    shared = [row("d", "Same", is_global=True), row("e", "Same", is_global=True)]
    seen, after = [], None
    while True:
        page, after = merge_patterns(own, shared, {"a", "b", "c"}, 1, after)
        seen += [r["id"] for r in page]
        if after is None:
            break
    assert seen == ["a", "b", "c", "d", "e"]


async def test_bad_list_queries_are_400(client: httpx.AsyncClient) -> None:
    for params in (
        {"source": "guessed"},
        {"entity_type": "Person"},
        {"limit": 0},
        {"limit": 1001},
        {"include_removed": "perhaps"},
        {"min_position": -1},
    ):
        r = await client.get("/v1/ontology/patterns", params=params)
        assert list(params) == fields(assert_error(r, 400, "INVALID_ARGUMENT")), params
    r = await client.get("/v1/ontology/patterns", params={"min_position": 10**9})
    assert_error(r, 400, "INVALID_ARGUMENT")
    r = await client.get("/v1/ontology/patterns", params={"min_global_position": 2**52})
    assert "min_global_position" in assert_error(r, 400, "INVALID_ARGUMENT")["message"]
    for cursor in ("", "12", "WzEsImEiXQ", "WzEsImEiLCJiIl0="):
        r = await client.get("/v1/ontology/patterns", params={"cursor": cursor})
        error = assert_error(r, 400, "INVALID_ARGUMENT")
        assert (fields(error), error["message"]) == (["cursor"], "cursor: invalid cursor")


async def test_bad_status_queries_are_400(client: httpx.AsyncClient) -> None:
    for value in (0, 5, 15, 100_010, "many"):
        r = await client.get("/v1/ontology/status", params={"bucket_runs": value})
        assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["bucket_runs"], value
    r = await client.get("/v1/ontology/status", params={"min_position": 10**9})
    assert_error(r, 400, "INVALID_ARGUMENT")


async def test_status_counts_types_patterns_runs_and_mentions(
    client: httpx.AsyncClient,
) -> None:
    written = await add(client, "Operator SDK", "tooling")
    got = await status(client, min_position=written["position"])
    assert set(got) == {"pattern_stats", "type_counts", "totals", "rates", "discovery_curve"}
    assert got["pattern_stats"] == {
        "seed": SEED_PATTERNS,
        "discovered": 0,
        "promoted": 0,
        "manual": 1,
    }
    assert got["type_counts"] == {
        "seed": SEED_TYPES,
        "provisional": 0,
        "confirmed": 1,
        "rejected": 0,
    }
    totals = got["totals"]
    assert (totals["patterns"], totals["types"]) == (SEED_PATTERNS + 1, SEED_TYPES + 1)
    assert (totals["runs"], totals["mentions"], totals["mentions_established"]) == (0, 0, 0)
    assert got["rates"]["resolved_by_confirmed"] is None
    assert got["rates"]["confirmation_rate"] == 1.0  # the one non-seed type is confirmed
    assert got["rates"]["rejection_rate"] == 0.0
    assert got["rates"]["promotion_rate"] is None

    r = await submit(client, "Alice met Bob in Berlin.", wait=20)
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    got = await status(client, min_position=await head_of(client), bucket_runs=10)
    assert got["totals"]["runs"] == 1
    assert got["totals"]["mentions"] == got["totals"]["mentions_established"] >= 3
    assert got["rates"]["resolved_by_confirmed"] == 1.0
    curve = got["discovery_curve"]
    assert curve and curve[0]["runs_from"] == 0
    assert all(b["runs_to"] - b["runs_from"] == 10 for b in curve)
    assert set(curve[0]) == {"runs_from", "runs_to", "patterns", "types", "per_100_runs"}


async def test_an_imported_export_reproduces_the_status(
    client: httpx.AsyncClient, app: FastAPI, workspace: str
) -> None:
    await add(client, "Operator SDK", "tooling")
    removed = await remove(client, ALICE)
    mine = await status(client, min_position=removed.json()["position"])
    document = await export(client)
    async with client_of(app, f"{workspace}-copy") as other:
        r = await other.post("/v1/ontology/import", json=document)
        theirs = await status(other, min_position=r.json()["position"])
    for part in ("pattern_stats", "type_counts"):
        assert theirs[part] == mine[part], part
    for rate in ("promotion_rate", "confirmation_rate", "rejection_rate"):
        assert theirs["rates"][rate] == mine["rates"][rate], rate


# -- the CLI, over HTTP against this package's stack ---------------------------------


Cli = Callable[..., Awaitable[Result]]


def json_of(result: Result) -> Any:
    """The JSON document a command printed (indented, so from a line "{" to a line "}"): the
    server's log lines, written to the same captured stdout, are left out."""
    lines = result.output.splitlines()
    start = lines.index("{")
    return json.loads("\n".join(lines[start : lines.index("}", start) + 1]))


@asynccontextmanager
async def cli_of(app: FastAPI, workspace: str) -> AsyncIterator[Cli]:
    async with served(app) as url:

        async def cli(*args: str, ws: str = workspace) -> Result:
            argv = [*args, "--url", url, "-w", ws]
            runner = CliRunner()
            env = {"COLUMNS": "300"}
            return await asyncio.to_thread(lambda: runner.invoke(cli_app, argv, env=env))

        yield cli


async def test_the_cli_adds_removes_exports_and_imports(
    app: FastAPI, stack: Stack, workspace: str, tmp_path: Path
) -> None:
    async with cli_of(app, workspace) as cli:
        r = await cli("ontology", "add", "Zanzibar DB", "technology", "--confidence", "0.8")
        assert r.exit_code == 0, r.output
        pid = json_of(r)["pattern_id"]
        assert pid == pattern_id("Zanzibar DB", "technology")

        r = await cli("ontology", "export")
        assert r.exit_code == 0, r.output
        document = json_of(r)
        assert {
            "name": "Zanzibar DB",
            "entity_type": "technology",
            "confidence": 0.8,
            "source": "manual",
        } in document["patterns"]
        out = tmp_path / "ontology.json"
        r = await cli("ontology", "export", "--output", str(out))
        assert r.exit_code == 0 and str(out) in r.output.replace("\n", ""), r.output
        assert json.loads(out.read_text()) == document

        other = f"{workspace}-b"
        r = await cli("ontology", "import", str(out), ws=other)
        assert r.exit_code == 0, r.output
        assert json_of(r)["workspace"] == other
        r = await cli("ontology", "export", ws=other)
        assert json_of(r) == document

        r = await cli("ontology", "remove", pid)
        assert r.exit_code == 0 and pid in r.output, r.output
        r = await cli("ontology", "remove", pid)
        assert r.exit_code == 1 and "404 NOT_FOUND" in r.stderr, r.output
        r = await cli("ontology", "add", "Bob", "Person")
        assert r.exit_code == 1 and "400 INVALID_ARGUMENT" in r.stderr, r.output

        bad = tmp_path / "bad.yaml"
        bad.write_text("format: stageline.ontology\nversion: 2\n")
        head = await stack.store.head(other)
        r = await cli("ontology", "import", str(bad), ws=other)
        assert r.exit_code == 1 and "400 INVALID_ARGUMENT" in r.stderr, r.output
        assert await stack.store.head(other) == head
        broken = tmp_path / "broken.json"
        broken.write_text("{")
        r = await cli("ontology", "import", str(broken))
        assert r.exit_code == 2 and "cannot read" in r.stderr, r.output
        dated = tmp_path / "dated.yaml"
        dated.write_text("format: stageline.ontology\nversion: 1\nexported_at: 2024-05-01\n")
        r = await cli("ontology", "import", str(dated), ws=other)
        assert r.exit_code == 2 and "exported_at" in r.stderr, r.output
        assert await stack.store.head(other) == head


async def test_the_cli_lists_patterns_and_shows_the_status(
    app: FastAPI, stack: Stack, workspace: str
) -> None:
    async with cli_of(app, workspace) as cli:
        r = await cli("ontology", "add", "Operator SDK", "tooling")
        assert r.exit_code == 0, r.output
        position = json_of(r)["position"]
        for projection in ("patterns", "ontology"):
            assert await stack.views.wait_for(workspace, position, 5, projection=projection)

        r = await cli("ontology", "patterns", "--source", "manual")
        assert r.exit_code == 0, r.output
        row = next(line for line in r.stdout.splitlines() if "Operator SDK" in line)
        assert "tooling" in row and "manual" in row
        # the counts under the rows are a note, on stderr: stdout holds the rows only
        assert "workspace patterns by source:" in r.stderr and "manual 1" in r.stderr
        assert "patterns by source" not in r.stdout
        assert all(line.count("\t") == 8 for line in r.stdout.splitlines()), r.stdout
        r = await cli("ontology", "patterns", "--json", "--type", "tooling")
        assert r.exit_code == 0, r.output
        assert [p["name"] for p in json_of(r)["patterns"]] == ["Operator SDK"]

        r = await cli("ontology", "status")
        assert r.exit_code == 0, r.output
        for title in ("types by status", "patterns by source", "rates", "discovery curve"):
            assert title in r.output
        r = await cli("ontology", "status", "--json", "--bucket-runs", "10")
        assert r.exit_code == 0, r.output
        assert json_of(r)["type_counts"]["confirmed"] == 1
        r = await cli("ontology", "status", "--bucket-runs", "15")
        assert r.exit_code == 1 and "400 INVALID_ARGUMENT" in r.stderr, r.output
