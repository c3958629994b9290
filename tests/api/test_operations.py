"""``/v1/runs/{id}/undo|retry|cancel``: retries, undo with compensation, cancel, 404/409."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from api_helpers import (
    assert_error,
    broker_down,
    connect,
    fields,
    head,
    reconcile,
    run_events,
    submit,
    submit_flaky,
    until_event,
    until_status,
)

from stageline.actors.stage import StageContext, StageResult
from stageline.api import create_app
from stageline.events import keys
from stageline.events.envelope import NO_STREAM, DomainEvent, NewEvent, RecordedEvent
from stageline.stack import Stack

TEXT = "Met Alice and Bob in Berlin to talk about the Redis migration with Carol."


def new_event_of(event: dict[str, Any]) -> NewEvent:
    """An event as an append request's body has it, to append through the store."""
    ids = {"event_id": uuid.UUID(event["event_id"])} if "event_id" in event else {}
    return NewEvent(
        type=event["type"], data=event["data"], causation_id=event.get("causation_id"), **ids
    )


def stage(run: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in run["stages"] if s["name"] == name)
    return found


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def entity_counts(client: httpx.AsyncClient, min_position: int) -> dict[str, int]:
    r = await client.get("/v1/entities", params={"min_position": min_position, "limit": 1000})
    assert r.status_code == 200, r.text
    return {e["key"]: e["mentions"] for e in r.json()["entities"]}


async def test_a_failing_stage_is_retried_until_it_succeeds(client: httpx.AsyncClient) -> None:
    r = await submit_flaky(client, wait=20, fail_times=2)
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "completed"
    assert stage(run, "flaky")["attempts"] == 3
    assert stage(run, "flaky")["status"] == "completed"
    events = await run_events(client, run["id"])
    failed = [e["data"] for e in events if e["type"] == "StageFailed"]
    assert [(f["attempt"], f["will_retry"]) for f in failed] == [(1, True), (2, True)]
    completed = [e["data"] for e in events if e["type"] == "StageCompleted"]
    assert [(c["stage"], c["attempt"]) for c in completed] == [
        ("normalize", 1),
        ("flaky", 3),
        ("summarize", 1),
    ]


async def test_retry_drives_a_failed_run_on_from_the_stage_that_failed(
    client: httpx.AsyncClient,
) -> None:
    # 1 attempt + 3 retries fail; the retried attempt 5 succeeds
    failed = (await submit_flaky(client, wait=20, fail_times=4)).json()
    assert failed["status"] == "failed", failed
    assert stage(failed, "flaky")["attempts"] == 4
    r = await client.post(f"/v1/runs/{failed['id']}/retry", headers={"X-Correlation-ID": "retry-1"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body == {
        "run_id": failed["id"],
        "status": "processing",
        "position": body["position"],
        "changed": True,
    }
    run = await until_status(client, failed["id"], "completed", min_position=body["position"])
    assert stage(run, "flaky")["attempts"] == 5
    events = await run_events(client, failed["id"])
    retried = next(e for e in events if e["type"] == "RunRetried")
    assert retried["data"] == {"stage": "flaky", "index": 1, "attempt": 5}
    assert retried["correlation_id"] == "retry-1"
    assert retried["position"] <= body["position"]
    assert types(events)[-1] == "RunCompleted"
    # the run's dead letter was closed by the retry
    dead_letter = next(e for e in events if e["type"] == "RunFailed")["event_id"]
    entry = await client.get(f"/v1/dlq/{dead_letter}", params={"min_position": body["position"]})
    assert entry.json()["status"] == "redriven"

    again = await client.post(f"/v1/runs/{failed['id']}/retry")
    error = assert_error(again, 409, "CONFLICT")
    assert error["details"] == {"run_id": failed["id"], "status": "completed"}


async def test_undo_retracts_the_runs_effects_and_keeps_its_history(
    client: httpx.AsyncClient,
) -> None:
    first = (await submit(client, TEXT, wait=20)).json()
    assert first["status"] == "completed"
    before = await entity_counts(client, await head(client))
    assert before and all(n >= 1 for n in before.values())
    second = (await submit(client, TEXT, wait=20)).json()
    assert await entity_counts(client, await head(client)) == {k: 2 * n for k, n in before.items()}
    original = await run_events(client, second["id"])

    r = await client.post(f"/v1/runs/{second['id']}/undo", headers={"X-Correlation-ID": "undo-1"})
    assert r.status_code == 200, r.text
    undone = r.json()
    assert undone == {
        "run_id": second["id"],
        "status": "compensated",
        "position": undone["position"],
        "changed": True,
    }
    assert await entity_counts(client, undone["position"]) == before
    run = (
        await client.get(f"/v1/runs/{second['id']}", params={"min_position": undone["position"]})
    ).json()
    assert run["status"] == "compensated"

    events = await run_events(client, second["id"])
    assert events[: len(original)] == original  # nothing edited, nothing removed
    added = events[len(original) :]
    assert types(added)[0] == "StageCompensated" and types(added)[-1] == "RunCompensated"
    assert {e["correlation_id"] for e in added} == {"undo-1"}
    assert added[-1]["position"] == undone["position"]
    mentioned = {e["event_id"] for e in original if e["type"] == "EntityMentioned"}
    retracted = {e["data"]["compensates"] for e in added if e["type"] == "EntityMentionRetracted"}
    assert mentioned and retracted == mentioned

    # a second undo writes nothing and says so
    again = await client.post(f"/v1/runs/{second['id']}/undo")
    assert again.status_code == 200, again.text
    assert again.json() == {**undone, "changed": False}
    assert len(await run_events(client, second["id"])) == len(events)
    assert await entity_counts(client, await head(client)) == before

    # undoing the first run too leaves no standing mention
    last = (await client.post(f"/v1/runs/{first['id']}/undo")).json()
    assert await entity_counts(client, last["position"]) == {}
    alice = await client.get("/v1/entities/person/Alice", params={"min_position": last["position"]})
    assert alice.json() == {"key": "person/Alice", "name": "Alice", "type": "person", "mentions": 0}
    error = assert_error(await client.get("/v1/entities/person/Nobody"), 404, "NOT_FOUND")
    assert error["details"] == {"entity_type": "person", "name": "Nobody"}


async def test_cancel_stops_a_run_in_the_middle_of_a_stage(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    accepted = (await submit_flaky(client, fail_times=0, sleep_seconds=1.0)).json()
    run_id = accepted["run_id"]
    await until_event(client, run_id, {"type": "StageStarted", "stage": "flaky"})

    r = await client.post(f"/v1/runs/{run_id}/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 200, r.text
    cancelled = r.json()
    assert cancelled == {
        "run_id": run_id,
        "status": "cancelled",
        "position": cancelled["position"],
        "changed": True,
    }
    again = await client.post(f"/v1/runs/{run_id}/cancel")  # no body: no reason
    assert again.status_code == 200, again.text
    assert again.json() == {**cancelled, "changed": False}

    await flaky_attempts_acknowledged(stack)  # the sleeping attempt has ended
    events = await run_events(client, run_id)
    assert types(events)[-1] == "RunCancelled"
    assert events[-1]["data"] == {"reason": "changed my mind"}
    assert not [
        e for e in events if e["type"] == "StageCompleted" and e["data"]["stage"] != "normalize"
    ]
    assert not [e for e in events if e["data"].get("stage") == "summarize"]
    run = await until_status(client, run_id, "cancelled", min_position=cancelled["position"])
    assert stage(run, "summarize")["status"] == "pending"


@pytest.mark.parametrize(
    ("operation", "status"), [("cancel", "cancelled"), ("undo", "compensated")]
)
async def test_a_cancel_or_undo_interrupts_the_stage_attempt_in_hand(
    client: httpx.AsyncClient, stack: Stack, operation: str, status: str
) -> None:
    # the flaky stage sleeping a minute under a two-minute timeout: only an interruption
    # ends its attempt within the test
    config = {
        "name": "long-flaky",
        "stages": [
            {"name": "normalize", "actor": "normalize"},
            {"name": "flaky", "actor": "flaky", "timeout_seconds": 120},
        ],
    }
    assert (await client.post("/v1/pipelines", json=config)).status_code == 201
    body = {"pipeline": "long-flaky", "input": {"text": "t", "flaky": {"sleep_seconds": 60}}}
    run_id = (await client.post("/v1/runs", json=body)).json()["run_id"]
    started = await until_event(client, run_id, {"type": "StageStarted", "stage": "flaky"})

    r = await client.post(f"/v1/runs/{run_id}/{operation}")
    assert r.status_code == 200, r.text
    await flaky_attempts_acknowledged(stack, within=10)  # not after its minute of sleep
    events = await run_events(client, run_id)
    after = [e["type"] for e in events if e["version"] > started["version"]]
    # nothing of the interrupted attempt (no failure, retry or result): only the operation's
    # events (an undo's compensates normalize's effects first)
    if operation == "cancel":
        assert after == ["RunCancelled"]
    else:
        assert after[0] == "StageCompensated" and after[-1] == "RunCompensated"
        assert not [t for t in after if t in ("StageStarted", "StageFailed", "StageCompleted")]
    run = await until_status(client, run_id, status, min_position=r.json()["position"])
    assert stage(run, "flaky")["status"] == "cancelled"
    assert stage(run, "flaky")["attempts"] == 1
    dlq = await client.get(
        "/v1/dlq", params={"status": "all", "min_position": r.json()["position"]}
    )
    assert dlq.json()["dead_letters"] == []


async def flaky_attempts_acknowledged(stack: Stack, within: float = 20) -> None:
    """Wait until the worker has acknowledged every command of the flaky stage."""
    channel = keys.stage_channel("flaky")
    deadline = asyncio.get_running_loop().time() + within
    while (await stack.broker_client.xpending(channel, keys.stage_group("flaky")))["pending"]:
        assert asyncio.get_running_loop().time() < deadline, "flaky commands still pending"
        await asyncio.sleep(0.05)


async def test_runs_that_ended_cannot_be_cancelled_or_retried(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    done = (await submit(client, wait=20)).json()
    failed = (await submit_flaky(client, wait=20, permanent=True)).json()
    assert (done["status"], failed["status"]) == ("completed", "failed")
    position = await stack.store.head(workspace)
    for run in (done, failed):
        error = assert_error(await client.post(f"/v1/runs/{run['id']}/cancel"), 409, "CONFLICT")
        assert error["details"] == {"run_id": run["id"], "status": run["status"]}
    error = assert_error(await client.post(f"/v1/runs/{done['id']}/retry"), 409, "CONFLICT")
    assert "failed" in error["message"]
    assert await stack.store.head(workspace) == position  # nothing written


def reported_run(stages: list[str]) -> dict[str, Any]:
    """A ``RunSubmitted`` as ``Stageline.report`` appends it, for a run of "nightly-etl"."""
    data = {"pipeline": "nightly-etl", "pipeline_version": 0, "stages": stages, "input": {}}
    return {"type": "RunSubmitted", "data": data}


@pytest.mark.parametrize("ended", [True, False], ids=["failed", "running"])
@pytest.mark.parametrize("operation", ["undo", "retry"])
async def test_a_run_reported_from_outside_is_neither_undone_nor_retried(
    client: httpx.AsyncClient, stack: Stack, workspace: str, operation: str, ended: bool
) -> None:
    # what Stageline.report records for a run of "nightly-etl" that failed, or still runs
    failed = {"stage": "extract", "error_type": "IOError", "error": "disk full"}
    events = [reported_run(["extract"])]
    if ended:
        events.append({"type": "RunFailed", "data": failed})
    r = await client.post("/v1/streams/run-etl-1/events", json={"events": events})
    assert r.status_code == 201, r.text
    position = await stack.store.head(workspace)

    error = assert_error(await client.post(f"/v1/runs/etl-1/{operation}"), 409, "CONFLICT")
    assert "reported from outside" in error["message"]
    assert error["details"]["run_id"] == "etl-1"
    assert error["details"]["pipeline_version"] == 0
    assert error["details"]["status"] == ("failed" if ended else "processing")
    assert await stack.store.head(workspace) == position  # nothing written


async def test_a_reported_run_whose_reporter_crashed_can_be_cancelled(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    # the reporter recorded extract, started transform, and died
    events = [
        reported_run(["extract", "transform"]),
        {"type": "StageStarted", "data": {"stage": "extract", "index": 0}},
        {"type": "StageCompleted", "data": {"stage": "extract", "index": 0}},
        {"type": "StageStarted", "data": {"stage": "transform", "index": 1}},
    ]
    r = await client.post("/v1/streams/run-etl-2/events", json={"events": events})
    assert r.status_code == 201, r.text

    cancelled = await client.post("/v1/runs/etl-2/cancel", json={"reason": "reporter died"})

    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert (body["status"], body["changed"]) == ("cancelled", True)
    assert "cannot stop the reporter" in body["note"]
    run = await until_status(client, "etl-2", "cancelled", min_position=body["position"])
    assert [(s["name"], s["status"]) for s in run["stages"]] == [
        ("extract", "completed"),
        ("transform", "cancelled"),
    ]
    again = await client.post("/v1/runs/etl-2/cancel")
    assert (again.status_code, again.json()["changed"]) == (200, False)
    # the reporter, come back, learns that the run has ended
    late = {"type": "StageCompleted", "data": {"stage": "transform", "index": 1}}
    r = await client.post("/v1/streams/run-etl-2/events", json={"events": [late]})
    assert assert_error(r, 409, "CONFLICT")["details"]["rule"] == "ended"
    assert [e["type"] for e in await run_events(client, "etl-2")][-1] == "RunCancelled"


@pytest.mark.parametrize("operation", ["undo", "retry", "cancel"])
async def test_an_unknown_run_is_404_and_a_malformed_id_400(
    client: httpx.AsyncClient, stack: Stack, workspace: str, operation: str
) -> None:
    error = assert_error(await client.post(f"/v1/runs/nope/{operation}"), 404, "NOT_FOUND")
    assert error["details"] == {"run_id": "nope"}
    assert_error(await client.post(f"/v1/runs/bad%20id/{operation}"), 400, "INVALID_ARGUMENT")
    assert_error(await client.get(f"/v1/runs/nope/{operation}"), 405, "METHOD_NOT_ALLOWED")
    assert await stack.store.head(workspace) == 0


async def test_a_bad_cancel_body_is_400(client: httpx.AsyncClient) -> None:
    run = (await submit(client, wait=20)).json()
    for body, field in (({"reason": 5}, "reason"), ({"why": "x"}, "why")):
        r = await client.post(f"/v1/runs/{run['id']}/cancel", json=body)
        assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == [field]
    r = await client.post(f"/v1/runs/{run['id']}/cancel", json={"reason": "r" * 501})
    assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == ["reason"]


async def test_undo_of_a_run_whose_compensator_fails_is_409_naming_stage_and_error(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    actor, pipeline = f"brittle-{tag}", f"brittle-{tag}"

    def brittle(item: dict[str, Any], ctx: StageContext) -> StageResult:
        return StageResult()

    def broken(effects: Sequence[RecordedEvent]) -> list[DomainEvent]:
        raise ValueError("cannot reverse that")

    stack.actors.register(actor, brittle, compensate=broken)
    stages = [{"name": "first", "actor": actor}]
    r = await client.post("/v1/pipelines", json={"name": pipeline, "stages": stages})
    assert r.status_code == 201, r.text
    run_id, started = str(uuid.uuid4()), str(uuid.uuid4())
    submitted = {"pipeline": pipeline, "pipeline_version": 1, "stages": ["first"], "input": {}}
    events = [
        {"type": "RunSubmitted", "data": submitted},
        {"type": "StageStarted", "event_id": started, "data": {"stage": "first", "index": 0}},
        {"type": "FlakyEffectApplied", "causation_id": started, "data": {"key": "k", "attempt": 1}},
        {"type": "StageCompleted", "data": {"stage": "first", "index": 0}},
    ]
    stream = keys.run_stream(run_id)
    # a run as stageline's own stages record it (no outside system may append to it)
    await stack.store.append(workspace, stream, [new_event_of(e) for e in events], NO_STREAM)

    r = await client.post(f"/v1/runs/{run_id}/undo")
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "CONFLICT"
    assert error["message"] == "compensating stage 'first' failed: ValueError: cannot reverse that"
    assert error["details"] == {"stage": "first", "error_type": "ValueError"}
    r = await client.get(f"/v1/streams/{stream}/events")
    assert len(r.json()["events"]) == 4  # nothing appended


async def test_a_retry_recorded_while_the_broker_is_down_is_accepted_and_handed_on_later(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    failed = (await submit_flaky(client, wait=20, fail_times=4)).json()
    assert failed["status"] == "failed", failed
    async with broker_down(stack) as down, connect(create_app(stack=down), workspace) as c:
        r = await c.post(f"/v1/runs/{failed['id']}/retry")
    assert r.status_code == 202, r.text  # RunRetried is recorded: a retry of the retry is 409
    position = r.json()["position"]
    assert types(await run_events(client, failed["id"]))[-2:] == [
        "RunRetried",
        "DeadLetterRedriven",
    ]
    assert await reconcile(stack, workspace, position) == 1
    run = await until_status(client, failed["id"], "completed", min_position=position)
    assert stage(run, "flaky")["attempts"] == 5
