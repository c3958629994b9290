"""``/v1/dlq``: a failed run's dead letter is listed, redriven or discarded, always as events."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
from api_helpers import (
    Projecting,
    assert_error,
    broker_down,
    connect,
    fields,
    head,
    reconcile,
    run_events,
    submit_flaky,
    until_event,
    until_status,
)

from stageline.actors.commands import StageCommand, encode
from stageline.actors.deadletters import STREAM, decode_poison
from stageline.api import create_app
from stageline.events import keys
from stageline.events.envelope import NewEvent
from stageline.stack import Stack

ROW_KEYS = {
    "id",
    "kind",
    "stream",
    "actor",
    "stage",
    "run_id",
    "error",
    "deliveries",
    "status",
    "created_at",
    "closed_at",
    "reason",
    "raw",
    "raw_encoding",
}


async def failed_run(client: httpx.AsyncClient, **flaky: Any) -> tuple[dict[str, Any], str]:
    """A ``flaky`` run that gave up, and the id of its dead letter."""
    run = (await submit_flaky(client, wait=20, **flaky)).json()
    assert run["status"] == "failed", run
    failed = [e for e in await run_events(client, run["id"]) if e["type"] == "RunFailed"]
    return run, failed[-1]["data"]["dead_letter"]


async def dead_letters(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/v1/dlq", params={"min_position": await head(client), **params})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["dead_letters"]
    return rows


async def test_a_failed_run_is_listed_then_redriven_to_completion(
    client: httpx.AsyncClient,
) -> None:
    run, dead_letter = await failed_run(client, fail_times=4)
    [row] = await dead_letters(client)
    assert set(row) == ROW_KEYS
    assert row["id"] == dead_letter
    assert (row["kind"], row["status"], row["run_id"]) == ("run", "open", run["id"])
    assert row["stream"] == f"run-{run['id']}"
    assert "attempt 4" in row["error"]
    assert row["closed_at"] is None
    assert await dead_letters(client, stage=row["stage"]) == [row]
    assert await dead_letters(client, stage="no-such-stage") == []

    r = await client.post(f"/v1/dlq/{dead_letter}/redrive")
    assert r.status_code == 202, r.text
    redriven = r.json()
    assert redriven == {
        "dead_letter": dead_letter,
        "kind": "run",
        "run_id": run["id"],
        "status": "redriven",
        "position": redriven["position"],
    }
    # attempts 1-4 failed; the redriven attempt 5 is past fail_times and succeeds
    done = await until_status(client, run["id"], "completed", min_position=redriven["position"])
    assert [s["attempts"] for s in done["stages"]] == [1, 5, 1]
    entry = await client.get(
        f"/v1/dlq/{dead_letter}", params={"min_position": redriven["position"]}
    )
    assert entry.status_code == 200, entry.text
    assert entry.json()["status"] == "redriven"
    assert entry.json()["closed_at"] is not None
    assert await dead_letters(client) == []
    assert [r["id"] for r in await dead_letters(client, status="redriven")] == [dead_letter]
    assert [r["id"] for r in await dead_letters(client, status="all")] == [dead_letter]

    # closed: neither redriven again nor discarded
    error = assert_error(await client.post(f"/v1/dlq/{dead_letter}/redrive"), 409, "CONFLICT")
    assert error["details"] == {"dead_letter": dead_letter, "status": "redriven"}
    assert_error(await client.delete(f"/v1/dlq/{dead_letter}"), 409, "CONFLICT")


async def test_discard_closes_the_entry_with_an_event_in_the_runs_history(
    client: httpx.AsyncClient,
) -> None:
    run, dead_letter = await failed_run(client, permanent=True)
    r = await client.delete(
        f"/v1/dlq/{dead_letter}",
        params={"reason": "bad input"},
        headers={"X-Correlation-ID": "discard-1"},
    )
    assert r.status_code == 200, r.text
    discarded = r.json()
    assert discarded == {
        "dead_letter": dead_letter,
        "kind": "run",
        "run_id": run["id"],
        "status": "discarded",
        "position": discarded["position"],
    }
    events = await run_events(client, run["id"])
    assert events[-1]["type"] == "DeadLetterDiscarded"
    assert events[-1]["data"] == {"dead_letter": dead_letter, "reason": "bad input"}
    assert events[-1]["correlation_id"] == "discard-1"
    assert events[-1]["position"] <= discarded["position"]
    entry = await client.get(
        f"/v1/dlq/{dead_letter}", params={"min_position": discarded["position"]}
    )
    assert entry.json()["status"] == "discarded"
    assert await dead_letters(client) == []
    # the run itself stays failed
    after = await client.get(
        f"/v1/runs/{run['id']}", params={"min_position": discarded["position"]}
    )
    assert after.json()["status"] == "failed"

    assert_error(await client.delete(f"/v1/dlq/{dead_letter}"), 409, "CONFLICT")
    assert_error(await client.post(f"/v1/dlq/{dead_letter}/redrive"), 409, "CONFLICT")


async def test_a_poison_command_is_redriven_onto_its_channel(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    # a command no worker could decode, recorded as the worker records one
    dead_letter = await stack.dead_letters.add(
        workspace, "flaky", raw=b"\xc1 not msgpack", error="undecodable command", deliveries=5
    )
    [row] = await dead_letters(client)
    assert (row["id"], row["kind"], row["status"]) == (dead_letter, "poison", "open")
    assert (row["stream"], row["actor"], row["deliveries"]) == (STREAM, "flaky", 5)

    r = await client.post(f"/v1/dlq/{dead_letter}/redrive")
    assert r.status_code == 202, r.text
    redriven = r.json()
    assert (redriven["kind"], redriven["run_id"], redriven["status"]) == (
        "poison",
        None,
        "redriven",
    )
    page = (await client.get(f"/v1/streams/{STREAM}/events")).json()
    assert [e["type"] for e in page["events"]] == ["DeadLettered", "DeadLetterRedriven"]
    assert page["events"][-1]["position"] <= redriven["position"]
    entry = await client.get(
        f"/v1/dlq/{dead_letter}", params={"min_position": redriven["position"]}
    )
    assert entry.json()["status"] == "redriven"
    assert_error(await client.post(f"/v1/dlq/{dead_letter}/redrive"), 409, "CONFLICT")


async def test_a_poison_entry_shows_its_raw_entry_as_text_or_base64(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    body = b'{"stream": "s", "events": [{"type": "Foo", "data": {"n": 1e400}}]}'
    ingest = await stack.dead_letters.add(
        workspace, "@ingest", raw=body, error="malformed JSON", deliveries=1
    )
    binary = await stack.dead_letters.add(
        workspace, "flaky", raw=b"\xc1 not msgpack", error="undecodable command", deliveries=5
    )
    rows = {row["id"]: row for row in await dead_letters(client)}
    assert (rows[ingest]["raw"], rows[ingest]["raw_encoding"]) == (body.decode(), "utf-8")
    assert (rows[binary]["raw"], rows[binary]["raw_encoding"]) == (
        base64.b64encode(b"\xc1 not msgpack").decode(),
        "base64",
    )
    one = (await client.get(f"/v1/dlq/{ingest}")).json()
    assert (one["raw"], one["raw_encoding"]) == (body.decode(), "utf-8")


async def test_poison_entries_are_listed_by_channel(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    _, run_entry = await failed_run(client, permanent=True)  # the flaky actor's run: no channel's
    ingest = await stack.dead_letters.add(
        workspace, "@ingest", raw=b"not json", error="malformed JSON", deliveries=1
    )
    flaky = await stack.dead_letters.add(
        workspace, "flaky", raw=b"\xc1 not msgpack", error="undecodable command", deliveries=5
    )
    assert {r["id"] for r in await dead_letters(client)} == {run_entry, ingest, flaky}
    assert [r["id"] for r in await dead_letters(client, channel="@ingest")] == [ingest]
    assert [r["id"] for r in await dead_letters(client, channel="flaky")] == [flaky]
    assert await dead_letters(client, channel="no-such-actor") == []  # as an unknown stage
    assert await dead_letters(client, channel="flaky", stage="flaky") == []
    await client.delete(f"/v1/dlq/{flaky}")
    assert await dead_letters(client, channel="flaky") == []
    assert [r["id"] for r in await dead_letters(client, channel="flaky", status="all")] == [flaky]


async def pages(client: httpx.AsyncClient, **params: Any) -> list[list[str]]:
    """The ids of each page of the list, following ``next_cursor`` to the end."""
    out: list[list[str]] = []
    cursor = None
    while True:
        at = {"min_position": await head(client), **params}
        r = await client.get("/v1/dlq", params=at if cursor is None else {**at, "cursor": cursor})
        assert r.status_code == 200, r.text
        out.append([row["id"] for row in r.json()["dead_letters"]])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return out
        assert len(out) < 100, "the cursor does not move on"


async def test_the_list_pages_newest_first_with_a_cursor(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    added = [
        await stack.dead_letters.add(workspace, "flaky", raw=b"x", error=f"e{i}", deliveries=1)
        for i in range(7)
    ]
    for closed in added[1:3]:
        assert (await client.delete(f"/v1/dlq/{closed}")).status_code == 200
    newest_first = added[::-1]
    assert [r["id"] for r in await dead_letters(client, status="all")] == newest_first
    assert await pages(client, status="all", limit=3) == [
        newest_first[:3],
        newest_first[3:6],
        newest_first[6:],
    ]
    opened = [i for i in newest_first if i not in added[1:3]]
    assert await pages(client, limit=2) == [opened[:2], opened[2:4], opened[4:]]
    assert await pages(client, limit=5) == [opened]  # a full last page: no next page
    assert await pages(client, channel="flaky", status="discarded", limit=1) == [
        [added[2]],
        [added[1]],
    ]
    assert await pages(client, stage="none") == [[]]


async def test_a_redrive_or_discard_first_lets_the_view_catch_up_with_the_log(
    client: httpx.AsyncClient, projector: Projecting
) -> None:
    await projector.stop()
    try:
        accepted = (await submit_flaky(client, permanent=True)).json()
        failed = await until_event(client, accepted["run_id"], {"type": "RunFailed"})
        dead_letter = failed["data"]["dead_letter"]
        discard = asyncio.create_task(client.delete(f"/v1/dlq/{dead_letter}"))
        # the view has not seen the failure: answering now could only be a wrong 404
        await asyncio.wait({discard}, timeout=0.3)
        assert not discard.done()
    finally:
        projector.start()
    r = await discard
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "discarded"


async def test_a_view_that_does_not_catch_up_in_time_is_503_and_nothing_is_written(
    stack: Stack, projector: Projecting, workspace: str, make_client: Callable[..., Any]
) -> None:
    async with make_client(read_wait_seconds=0.2) as client:
        _, dead_letter = await failed_run(client, permanent=True)
        async with projector.paused():
            moved = await client.post(
                "/v1/streams/s/events", json={"events": [{"type": "A", "data": {}}]}
            )
            assert moved.status_code == 201
            position = await stack.store.head(workspace)
            for r in (
                await client.post(f"/v1/dlq/{dead_letter}/redrive"),
                await client.delete(f"/v1/dlq/{dead_letter}"),
            ):
                error = assert_error(r, 503, "UNAVAILABLE")
                assert error["details"]["min_position"] == position
            assert await stack.store.head(workspace) == position
        r = await client.delete(f"/v1/dlq/{dead_letter}")
        assert r.status_code == 200, r.text


async def test_an_unknown_dead_letter_is_404(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    for r in (
        await client.get("/v1/dlq/nope"),
        await client.post("/v1/dlq/nope/redrive"),
        await client.delete("/v1/dlq/nope"),
    ):
        error = assert_error(r, 404, "NOT_FOUND")
        assert error["details"] == {"dead_letter": "nope"}
    assert await stack.store.head(workspace) == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "closed"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"stage": ""}, "stage"),
        ({"channel": ""}, "channel"),
        ({"channel": "c" * 101}, "channel"),
        ({"min_position": -1}, "min_position"),
        ({"cursor": "x"}, "cursor"),
        ({"cursor": "-1"}, "cursor"),
        ({"cursor": "1" * 20}, "cursor"),
    ],
)
async def test_bad_list_parameters_are_400(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    r = await client.get("/v1/dlq", params=params)
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == [field]


async def test_a_discard_reason_longer_than_500_is_400(client: httpx.AsyncClient) -> None:
    r = await client.delete("/v1/dlq/whatever", params={"reason": "r" * 501})
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["reason"]


async def append_dead_letter(
    stack: Stack, workspace: str, stream: str = STREAM, **fields: Any
) -> str:
    """A ``DeadLettered`` appended by hand, through the store (no client may append to the
    dead letters); returns its id."""
    dead_letter = str(uuid.uuid4())
    data = {"dead_letter": dead_letter, "error": "e", "deliveries": 1, **fields}
    await stack.store.append(workspace, stream, [NewEvent(type="DeadLettered", data=data)])
    return dead_letter


async def last_entry(stack: Stack, actor: str) -> bytes:
    """The id of the newest entry ever added to ``actor``'s channel."""
    info = await stack.bus.client.xinfo_stream(keys.stage_channel(actor))
    last: bytes = info["last-generated-id"]
    return last


def a_command(workspace: str) -> dict[str, Any]:
    return {
        "workspace": workspace,
        "run_id": "r1",
        "pipeline": "flaky",
        "pipeline_version": 1,
        "index": 0,
        "version": 0,
        "item": {"text": "x"},
    }


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"command": {"run_id": "r1"}}, id="command-not-a-stage-command"),
        pytest.param({"raw": "not base64!"}, id="raw-not-base64"),
        pytest.param({"command": a_command("elsewhere")}, id="command-of-another-workspace"),
        pytest.param(
            {
                "raw": base64.b64encode(
                    encode(msgspec.convert(a_command("elsewhere"), StageCommand))
                )
            },
            id="raw-command-of-another-workspace",
        ),
    ],
)
async def test_a_dead_letter_that_cannot_be_redriven_safely_is_409_and_nothing_is_written(
    client: httpx.AsyncClient, stack: Stack, workspace: str, entry: dict[str, Any]
) -> None:
    if isinstance(entry.get("raw"), bytes):
        entry = {"raw": entry["raw"].decode()}
    dead_letter = await append_dead_letter(stack, workspace, actor="flaky", **entry)
    position = await stack.store.head(workspace)
    last = await last_entry(stack, "flaky")

    error = assert_error(await client.post(f"/v1/dlq/{dead_letter}/redrive"), 409, "CONFLICT")

    assert error["details"]["dead_letter"] == dead_letter
    assert await stack.store.head(workspace) == position
    assert await last_entry(stack, "flaky") == last
    # it can still be closed by hand
    r = await client.delete(f"/v1/dlq/{dead_letter}", params={"reason": "bad entry"})
    assert r.status_code == 200, r.text


async def test_a_dead_letter_appended_to_another_stream_is_no_entry(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    dead_letter = await append_dead_letter(
        stack, workspace, "not-dead-letters", actor="flaky", raw="eA=="
    )

    assert await dead_letters(client, status="all") == []
    for r in (
        await client.get(f"/v1/dlq/{dead_letter}", params={"min_position": await head(client)}),
        await client.post(f"/v1/dlq/{dead_letter}/redrive"),
        await client.delete(f"/v1/dlq/{dead_letter}"),
    ):
        assert_error(r, 404, "NOT_FOUND")


async def test_a_dead_letter_with_a_command_of_its_workspace_is_redriven(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    # of a pipeline no worker has: the worker takes it and dead-letters it again
    command = {**a_command(workspace), "pipeline": "retired"}
    dead_letter = await append_dead_letter(stack, workspace, actor="flaky", command=command)
    last = await last_entry(stack, "flaky")

    r = await client.post(f"/v1/dlq/{dead_letter}/redrive")

    assert r.status_code == 202, r.text
    channel = keys.stage_channel("flaky")
    [(_, fields)] = await stack.bus.client.xrange(channel, min=b"(" + last)
    assert decode_poison(fields[b"__data__"]) == msgspec.convert(command, StageCommand)


@pytest.mark.parametrize(
    "actor",
    ["nobody", "Flaky", "flaky ", "flaky\n", "", "../flaky", "{elsewhere}:log"],
)
async def test_a_dead_letter_of_an_actor_that_is_not_registered_is_409_and_nothing_is_written(
    client: httpx.AsyncClient, stack: Stack, workspace: str, actor: str
) -> None:
    dead_letter = await append_dead_letter(
        stack, workspace, actor=actor, command=a_command(workspace)
    )
    position = await stack.store.head(workspace)

    error = assert_error(await client.post(f"/v1/dlq/{dead_letter}/redrive"), 409, "CONFLICT")

    assert error["details"] == {"dead_letter": dead_letter}
    assert repr(actor) in error["message"]
    assert await stack.store.head(workspace) == position
    assert await stack.bus.client.exists(keys.stage_channel(actor)) == 0


async def test_a_run_redriven_while_the_broker_is_down_is_accepted_and_handed_on_later(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    run, dead_letter = await failed_run(client, fail_times=4)
    async with broker_down(stack) as down, connect(create_app(stack=down), workspace) as c:
        r = await c.post(f"/v1/dlq/{dead_letter}/redrive")
    assert r.status_code == 202, r.text
    position = r.json()["position"]
    assert await reconcile(stack, workspace, position) == 1
    await until_status(client, run["id"], "completed", min_position=position)


async def test_a_poison_command_is_not_redriven_while_the_broker_is_down_and_says_so(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    dead_letter = await stack.dead_letters.add(
        workspace, "flaky", raw=b"\xc1 not msgpack", error="undecodable command", deliveries=5
    )
    async with broker_down(stack) as down, connect(create_app(stack=down), workspace) as c:
        r = await c.post(f"/v1/dlq/{dead_letter}/redrive")
    error = assert_error(r, 503, "UNAVAILABLE")
    assert error["message"].startswith("the broker (the stage channels) could not be reached")
    assert error["details"] == {"dependency": "broker", "reason": "ConnectionError"}
    page = (await client.get(f"/v1/streams/{STREAM}/events")).json()
    assert [e["type"] for e in page["events"]] == ["DeadLettered"]  # still open
