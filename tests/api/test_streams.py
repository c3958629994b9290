"""``/v1/streams``: appends with expected versions, idempotency, schema checks, reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from api_helpers import assert_error, fields, nested

from stageline.api.limits import MAX_JSON_DEPTH
from stageline.events.envelope import NewEvent
from stageline.events.keys import idempotency_key
from stageline.events.redis_store import Claim
from stageline.events.store import AppendRequest, AppendResult
from stageline.stack import Stack


def event(n: int = 0, type: str = "OrderPlaced", **extra: Any) -> dict[str, Any]:
    return {"type": type, "data": {"n": n}, **extra}


async def append(
    client: httpx.AsyncClient,
    stream: str,
    events: list[dict[str, Any]],
    expected_version: Any = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    body: dict[str, Any] = {"events": events}
    if expected_version is not None:
        body["expected_version"] = expected_version
    return await client.post(f"/v1/streams/{stream}/events", json=body, headers=headers or {})


async def test_expected_versions_guard_the_stream(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    r = await append(client, "order-1", [event(0), event(1)], "no_stream")
    assert r.status_code == 201, r.text
    assert r.json() == {
        "stream": "order-1",
        "version": 1,
        "versions": [0, 1],
        "positions": [1, 2],
        "deduplicated": False,
    }

    clash = await append(client, "order-1", [event(2)], "no_stream")
    error = assert_error(clash, 409, "CONFLICT")
    assert error["details"] == {
        "stream": "order-1",
        "expected_version": "no_stream",
        "actual_version": 1,
    }
    clash = await append(client, "order-1", [event(2)], 0)
    assert assert_error(clash, 409, "CONFLICT")["details"]["actual_version"] == 1
    assert await stack.store.head(workspace) == 2

    r = await append(client, "order-1", [event(2)], 1)
    assert r.status_code == 201 and r.json()["version"] == 2
    r = await append(client, "order-1", [event(3)])  # default: any
    assert r.status_code == 201 and r.json()["positions"] == [4]
    r = await append(client, "order-1", [event(4)], "any")
    assert r.status_code == 201 and r.json()["version"] == 4


async def test_concurrent_requests_share_one_append_each_answered_on_its_own(
    client: httpx.AsyncClient, stack: Stack, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    send = stack.outside_appends.send

    async def counted(requests: Sequence[AppendRequest]) -> list[AppendResult | Exception]:
        batches.append(len(requests))
        return await send(requests)

    monkeypatch.setattr(stack.outside_appends, "send", counted)
    await append(client, "taken", [event(0)])
    run = f"run-{uuid.uuid4()}"
    calls = [append(client, f"s{i}", [event(i)], "no_stream") for i in range(8)]
    calls.append(append(client, "taken", [event(1)], "no_stream"))  # a clash: its own
    calls.append(append(client, run, [{"type": "RunCompleted", "data": {}}]))  # a run rule
    answers = await asyncio.gather(*calls)

    assert [r.status_code for r in answers] == [201] * 8 + [409, 409], [r.text for r in answers]
    assert [r.json()["stream"] for r in answers[:8]] == [f"s{i}" for i in range(8)]
    assert all(r.json()["versions"] == [0] for r in answers[:8])
    assert assert_error(answers[8], 409, "CONFLICT")["details"]["actual_version"] == 0
    assert sum(batches) == 1 + 10 and max(batches) > 1, batches  # gathered, not one by one
    assert await stack.store.head(workspace) == 9


async def test_concurrent_idempotency_key_claims_share_one_round_trip(
    client: httpx.AsyncClient, stack: Stack, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    send = stack.claims.send

    async def counted(claims: Sequence[Claim]) -> list[bytes | Exception | None]:
        batches.append(len(claims))
        return await send(claims)

    monkeypatch.setattr(stack.claims, "send", counted)
    await append(client, "used", [event(0)], headers={"Idempotency-Key": "k-used"})
    keys = [f"k-{i}" for i in range(6)]
    calls = [
        append(client, f"s{i}", [event(i)], "no_stream", headers={"Idempotency-Key": key})
        for i, key in enumerate(keys)
    ]
    # the key of another request (409), and a retry of the first one (deduplicated)
    calls.append(append(client, "s9", [event(9)], headers={"Idempotency-Key": "k-used"}))
    calls.append(append(client, "used", [event(0)], headers={"Idempotency-Key": "k-used"}))
    answers = await asyncio.gather(*calls)

    assert [r.status_code for r in answers] == [201] * 6 + [409, 201], [r.text for r in answers]
    assert [r.json()["stream"] for r in answers[:6]] == [f"s{i}" for i in range(6)]
    assert "Idempotency-Key" in assert_error(answers[6], 409, "CONFLICT")["message"]
    assert answers[7].json()["deduplicated"] is True
    assert sum(batches) == 1 + 8 and max(batches) > 1, batches  # gathered, not one by one
    assert await stack.store.head(workspace) == 7


async def test_idempotency_key_makes_a_retry_append_nothing(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    key = {"Idempotency-Key": "batch-7"}
    first = await append(client, "ledger", [event(0), event(1)], "no_stream", headers=key)
    assert first.status_code == 201
    retry = await append(client, "ledger", [event(0), event(1)], "no_stream", headers=key)
    assert retry.status_code == 201, retry.text
    assert retry.json() == {**first.json(), "deduplicated": True}
    assert await stack.store.head(workspace) == 2

    other = await append(client, "ledger", [event(5), event(6)], "any", headers=key)
    assert "Idempotency-Key" in assert_error(other, 409, "CONFLICT")["message"]
    # the same events and more, or fewer: a different request too, and nothing is written
    longer = await append(client, "ledger", [event(0), event(1), event(2)], headers=key)
    assert "Idempotency-Key" in assert_error(longer, 409, "CONFLICT")["message"]
    shorter = await append(client, "ledger", [event(0)], headers=key)
    assert "Idempotency-Key" in assert_error(shorter, 409, "CONFLICT")["message"]
    assert await stack.store.head(workspace) == 2

    # without a key, the same body is a new append
    r = await append(client, "ledger", [event(0)])
    assert r.status_code == 201 and r.json()["positions"] == [3]


async def test_an_idempotency_key_names_one_request_whatever_its_event_ids(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    key = {"Idempotency-Key": "same-key"}
    sent = [event(0, event_id=str(uuid.uuid4()))]
    first = await append(client, "s", sent, headers=key)
    assert first.status_code == 201, first.text
    retry = await append(client, "s", sent, headers=key)
    assert retry.json() == {**first.json(), "deduplicated": True}

    other_id = await append(client, "s", [event(1, event_id=str(uuid.uuid4()))], headers=key)
    assert "Idempotency-Key" in assert_error(other_id, 409, "CONFLICT")["message"]
    no_id = await append(client, "s", [event(2)], headers=key)
    assert "Idempotency-Key" in assert_error(no_id, 409, "CONFLICT")["message"]
    other_stream = await append(client, "t", sent, headers=key)
    assert "Idempotency-Key" in assert_error(other_stream, 409, "CONFLICT")["message"]
    assert await stack.store.head(workspace) == 1


async def test_concurrent_requests_with_one_key_write_once(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    key = {"Idempotency-Key": "together"}
    sent = [event(0, event_id=str(uuid.uuid4())), event(1)]
    answers = await asyncio.gather(*(append(client, "s", sent, headers=key) for _ in range(8)))
    assert [r.status_code for r in answers] == [201] * 8
    assert sorted(r.json()["deduplicated"] for r in answers) == [False] + [True] * 7
    assert await stack.store.head(workspace) == 2


async def test_a_key_whose_request_appended_nothing_is_free_for_the_corrected_request(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    key = {"Idempotency-Key": "fix-me"}
    stale = await append(client, "ledger", [event(0)], 3, headers=key)
    assert assert_error(stale, 409, "CONFLICT")["details"]["actual_version"] == -1
    assert await stack.store.head(workspace) == 0

    fixed = await append(client, "ledger", [event(0)], "no_stream", headers=key)
    assert fixed.status_code == 201, fixed.text
    again = await append(client, "ledger", [event(0)], "no_stream", headers=key)
    assert again.json() == {**fixed.json(), "deduplicated": True}
    # appended: the key stays bound to it
    other = await append(client, "ledger", [event(0)], 0, headers=key)
    assert "Idempotency-Key" in assert_error(other, 409, "CONFLICT")["message"]
    assert await stack.store.head(workspace) == 1


async def test_concurrent_clashing_requests_with_one_key_leave_it_free(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    await append(client, "s", [event(0)])
    key = {"Idempotency-Key": "both-stale"}
    sent = [event(1), event(2)]
    answers = await asyncio.gather(*(append(client, "s", sent, 5, headers=key) for _ in range(4)))
    for answer in answers:
        assert "version" in assert_error(answer, 409, "CONFLICT")["message"]
    fixed = await asyncio.gather(*(append(client, "s", sent, 0, headers=key) for _ in range(4)))
    assert [r.status_code for r in fixed] == [201] * 4
    assert sorted(r.json()["deduplicated"] for r in fixed) == [False] + [True] * 3
    assert await stack.store.head(workspace) == 3


async def test_a_key_is_released_only_while_its_events_are_not_in_the_stream(
    stack: Stack, workspace: str
) -> None:
    # an append that landed though its answer was lost (a 503) keeps its key bound
    store = stack.store
    key = idempotency_key(workspace, "landed")
    sent = NewEvent(type="T", data={}, event_id=uuid.uuid4())
    assert await store.claim_many([(key, b"digest", 60)]) == [None]
    await store.append(workspace, "s", [sent])
    assert not await store.release(key, b"digest", workspace, "s", [sent.event_id])
    assert not await store.release(key, b"other", workspace, "s", [uuid.uuid4()])
    # claimed together with others, each answered on its own
    other = idempotency_key(workspace, "other")
    assert await store.claim_many([(key, b"other", 60), (other, b"x", 60)]) == [b"digest", None]
    assert await store.release(key, b"digest", workspace, "s", [uuid.uuid4()])
    assert await store.claim_many([(key, b"other", 60)]) == [None]


async def test_explicit_event_ids_are_kept_and_deduplicated(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    event_id = str(uuid.uuid4())
    r = await append(client, "s", [event(0, event_id=event_id)])
    assert r.status_code == 201
    again = await append(client, "s", [event(0, event_id=event_id)])
    assert again.json()["deduplicated"] is True
    page = (await client.get("/v1/streams/s/events")).json()
    assert [e["event_id"] for e in page["events"]] == [event_id]
    twice = await append(client, "s2", [event(0, event_id=event_id), event(1, event_id=event_id)])
    assert_error(twice, 400, "INVALID_ARGUMENT")
    assert await stack.store.head(workspace) == 1


async def test_an_event_id_the_stream_holds_for_another_event_is_409_appending_nothing(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    placed, note = str(uuid.uuid4()), str(uuid.uuid4())
    discarded = {"type": "DeadLetterDiscarded", "data": {"dead_letter": "d"}, "event_id": note}
    first = [{"event_id": placed, "type": "OrderPlaced", "data": {"total": 10}}, discarded]
    assert (await append(client, "order-77", first, "no_stream")).status_code == 201

    cancelled = {"event_id": placed, "type": "OrderCancelled", "data": {"reason": "fraud"}}
    fresh = {"event_id": str(uuid.uuid4()), "type": "OrderNote", "data": {"n": 1}}
    for sent in (
        [cancelled, fresh],
        [cancelled],
        [first[0], {**discarded, "data": {"dead_letter": "d", "reason": "r"}}],
    ):
        error = assert_error(await append(client, "order-77", sent, 1), 409, "CONFLICT")
        clash = next(i for i, e in enumerate(sent) if e not in first)
        assert f"events[{clash}] has event_id {sent[clash]['event_id']}" in error["message"]
        assert error["details"]["version"] == clash
        assert error["details"]["differs"] == (["type", "data"] if clash == 0 else ["data"])
    assert await stack.store.head(workspace) == 2

    # sent again, its times and defaults filled in anew: a retry
    again = await append(client, "order-77", first, "no_stream")
    assert again.status_code == 201, again.text
    assert again.json()["deduplicated"] is True
    page = (await client.get("/v1/streams/order-77/events")).json()
    assert [e["type"] for e in page["events"]] == ["OrderPlaced", "DeadLetterDiscarded"]


async def test_a_request_repeating_some_events_the_stream_holds_is_409_appending_nothing(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    held = event(0, event_id=str(uuid.uuid4()))
    assert (await append(client, "s", [event(1), held])).status_code == 201
    for key in ({}, {"Idempotency-Key": "partial"}):
        partial = await append(client, "s", [event(2), held], headers=key)
        error = assert_error(partial, 409, "CONFLICT")
        assert f"holds events[1] (event_id {held['event_id']}, at version 1)" in error["message"]
        assert error["details"]["event_id"] == held["event_id"]
    assert await stack.store.head(workspace) == 2
    # the key stayed free for the request corrected
    fixed = await append(client, "s", [event(2)], headers={"Idempotency-Key": "partial"})
    assert fixed.status_code == 201, fixed.text


async def test_a_key_whose_request_clashed_on_an_event_id_is_free_and_the_409_says_why(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    held = str(uuid.uuid4())
    sent = [{"event_id": held, "type": "OrderPlaced", "data": {"total": 10}}]
    assert (await append(client, "order-77", sent)).status_code == 201
    key = {"Idempotency-Key": "fresh-1"}
    other = [{"event_id": held, "type": "OrderCancelled", "data": {"reason": "fraud"}}]
    error = assert_error(await append(client, "order-77", other, headers=key), 409, "CONFLICT")
    assert held in error["message"] and "Idempotency-Key" not in error["message"]
    assert await stack.store.head(workspace) == 1

    fixed = [{"type": "OrderCancelled", "data": {"reason": "fraud"}}]
    first = await append(client, "order-77", fixed, headers=key)
    assert first.status_code == 201, first.text
    retry = await append(client, "order-77", fixed, headers=key)
    assert retry.json() == {**first.json(), "deduplicated": True}
    assert await stack.store.head(workspace) == 2


async def test_an_integer_the_log_cannot_hold_is_400_naming_its_place(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    r = await append(client, "s", [event(0), {"type": "T", "data": {"x": [0, 10**29]}}])
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert "data.x[1] is an integer beyond" in error["message"], error
    assert await stack.store.head(workspace) == 0


async def test_events_carry_the_request_correlation_id_unless_they_name_one(
    client: httpx.AsyncClient,
) -> None:
    at = "2024-05-01T12:00:00+02:00"
    r = await append(
        client,
        "c",
        [event(0), event(1, correlation_id="own", causation_id="x", occurred_at=at)],
        headers={"X-Correlation-ID": "req-1"},
    )
    assert r.status_code == 201
    events = (await client.get("/v1/streams/c/events")).json()["events"]
    assert [e["correlation_id"] for e in events] == ["req-1", "own"]
    assert events[1]["causation_id"] == "x"
    assert events[1]["occurred_at"].startswith("2024-05-01T10:00:00")
    assert events[0]["data"] == {"n": 0}
    assert events[0]["schema_version"] == 1


async def test_known_event_types_are_checked_against_their_schema(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    bad = {"type": "StageStarted", "data": {"stage": 5, "index": "first"}}
    r = await append(client, "typed", [event(0), bad])
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert error["message"].startswith("events[1]: StageStarted")
    assert error["details"]["index"] == 1
    too_new = {"type": "StageStarted", "data": {"stage": "a", "index": 0}, "schema_version": 99}
    assert_error(await append(client, "typed", [too_new]), 400, "INVALID_ARGUMENT")
    assert await stack.store.head(workspace) == 0

    good = {"type": "StageStarted", "data": {"stage": "a", "index": 0}}
    assert (await append(client, "typed", [good])).status_code == 201


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("no events", {"events": []}, "events"),
    ("no events key", {}, "events"),
    ("too many events", {"events": [event(i) for i in range(1001)]}, "events"),
    ("bad type", {"events": [event(type="9lives")]}, "events[0].type"),
    ("type too long", {"events": [event(type="T" * 101)]}, "events[0].type"),
    ("missing type", {"events": [{"data": {}}]}, "events[0].type"),
    ("data not an object", {"events": [{"type": "A", "data": [1]}]}, "events[0].data"),
    ("missing data", {"events": [{"type": "A"}]}, "events[0].data"),
    ("data nested too deep", {"events": [event(), event(data={"a": nested(MAX_JSON_DEPTH)})]}, "events[1].data"),
    ("bad event id", {"events": [event(event_id="nope")]}, "events[0].event_id"),
    ("schema version 0", {"events": [event(schema_version=0)]}, "events[0].schema_version"),
    ("schema version text", {"events": [event(schema_version="2")]}, "events[0].schema_version"),
    ("naive occurred_at", {"events": [event(occurred_at="2024-01-01T00:00:00")]}, "events[0].occurred_at"),
    ("unknown event field", {"events": [event(color="red")]}, "events[0].color"),
    ("unknown field", {"events": [event()], "extra": 1}, "extra"),
    ("negative version", {"events": [event()], "expected_version": -1}, "expected_version"),
    ("bool version", {"events": [event()], "expected_version": True}, "expected_version"),
    ("float version", {"events": [event()], "expected_version": 1.5}, "expected_version"),
    ("unknown version word", {"events": [event()], "expected_version": "latest"}, "expected_version"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_append_bodies_are_400_naming_the_field_and_append_nothing(
    client: httpx.AsyncClient, stack: Stack, workspace: str, case: str, body: Any, field: str
) -> None:
    r = await client.post("/v1/streams/s/events", json=body)
    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert field in fields(error), error
    assert error["message"].startswith(field.split("[")[0])
    assert await stack.store.head(workspace) == 0


async def test_bad_stream_names_are_400(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    for stream in ("-leading-dash", "_x", "with%20space", "a" * 201, "semi;colon"):
        r = await client.post(f"/v1/streams/{stream}/events", json={"events": [event()]})
        message = assert_error(r, 400, "INVALID_ARGUMENT")["message"]
        assert message.endswith("starting with a letter or digit"), message
        assert_error(await client.get(f"/v1/streams/{stream}/events"), 400, "INVALID_ARGUMENT")
    assert await stack.store.head(workspace) == 0


async def test_reading_a_stream_pages_both_ways(client: httpx.AsyncClient) -> None:
    assert (await append(client, "p", [event(i) for i in range(5)])).status_code == 201
    page = (await client.get("/v1/streams/p/events", params={"limit": 2})).json()
    assert [e["data"]["n"] for e in page["events"]] == [0, 1]
    assert page["version"] == 4 and page["next_from_version"] == 2
    page = (await client.get("/v1/streams/p/events", params={"from_version": 4, "limit": 2})).json()
    assert [e["data"]["n"] for e in page["events"]] == [4]
    assert page["next_from_version"] is None
    page = (
        await client.get("/v1/streams/p/events", params={"backwards": "true", "limit": 5})
    ).json()
    assert [e["data"]["n"] for e in page["events"]] == [4, 3, 2, 1, 0]
    assert page["next_from_version"] is None
    event0 = page["events"][-1]
    assert set(event0) == {
        "event_id", "type", "schema_version", "stream", "version", "position", "workspace",
        "occurred_at", "recorded_at", "correlation_id", "causation_id", "data",
    }  # fmt: skip
    uuid.UUID(event0["event_id"])

    assert_error(await client.get("/v1/streams/none/events"), 404, "NOT_FOUND")
    for params in ({"limit": 0}, {"limit": 1001}, {"from_version": -1}, {"backwards": "sideways"}):
        r = await client.get("/v1/streams/p/events", params=params)
        assert fields(assert_error(r, 400, "INVALID_ARGUMENT")) == [next(iter(params))]


def failing_run(retry_at: str) -> list[dict[str, Any]]:
    """A reported run's events as an outside system sends them: its first stage failed
    and comes back at ``retry_at``, a time as JSON has it (text)."""
    submitted = {
        "pipeline": "outside-flaky",
        "pipeline_version": 0,
        "stages": ["normalize", "flaky", "summarize"],
        "input": {"text": "sent from outside"},
    }
    failed = {
        "stage": "normalize",
        "index": 0,
        "error_type": "Boom",
        "error": "boom",
        "will_retry": True,
        "retry_at": retry_at,
    }
    return [
        {"type": "RunSubmitted", "data": submitted},
        {"type": "StageStarted", "data": {"stage": "normalize", "index": 0}},
        {"type": "StageFailed", "data": failed},
    ]


async def test_a_time_of_a_known_type_sent_as_text_is_stored_as_a_time(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    r = await append(client, "run-outside", failing_run("2099-01-01T02:00:00+02:00"), "no_stream")
    assert r.status_code == 201, r.text

    [*_, failed] = await stack.store.read_stream(workspace, "run-outside")
    assert failed.data["retry_at"] == datetime(2099, 1, 1, tzinfo=UTC)
    # the run folds: it is read and cancelled like any other
    view = await client.get("/v1/runs/outside", params={"min_position": r.json()["positions"][-1]})
    assert (view.status_code, view.json()["status"]) == (200, "retrying"), view.text
    assert view.json()["stages"][0]["retry_at"].startswith("2099-01-01T00:00:00")
    cancelled = await client.post("/v1/runs/outside/cancel")
    assert cancelled.status_code == 200, cancelled.text
    view = await client.get(
        "/v1/runs/outside", params={"min_position": cancelled.json()["position"]}
    )
    assert view.json()["status"] == "cancelled"


async def test_a_request_with_a_time_as_text_resent_with_its_key_is_the_same_request(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    key = {"Idempotency-Key": "failing-run"}
    events = failing_run("2099-01-01T02:00:00+02:00")
    first = await append(client, "run-resent", events, "no_stream", headers=key)
    assert first.status_code == 201, first.text

    again = await append(client, "run-resent", events, "no_stream", headers=key)

    assert again.status_code == 201, again.text
    assert again.json() == {**first.json(), "deduplicated": True}
    other = failing_run("2099-01-01T02:00:01+02:00")
    changed = await append(client, "run-resent", other, "no_stream", headers=key)
    assert "Idempotency-Key" in assert_error(changed, 409, "CONFLICT")["message"]
    assert await stack.store.head(workspace) == 3


async def test_data_of_an_unknown_type_is_stored_as_sent(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    data = {"retry_at": "2099-01-01T02:00:00+02:00", "n": 1, "f": 1.0}
    r = await append(client, "orders", [{"type": "OrderDelayed", "data": data}])
    assert r.status_code == 201, r.text

    [stored] = await stack.store.read_stream(workspace, "orders")
    assert stored.data == data
    assert [type(v) for v in stored.data.values()] == [str, int, float]


async def test_a_time_without_a_zone_is_400_and_nothing_is_appended(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    r = await append(client, "run-naive", failing_run("2099-01-01T00:00:00"))

    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert error["message"].startswith("events[2]: StageFailed")
    assert "retry_at" in error["message"]
    assert await stack.store.head(workspace) == 0


async def test_a_field_a_known_type_has_not_is_400_and_nothing_is_appended(
    client: httpx.AsyncClient, stack: Stack, workspace: str
) -> None:
    events = failing_run("2099-01-01T02:00:00Z")
    events[2]["data"] |= {"host": "worker-7", "attempt_note": "x"}

    r = await append(client, "run-extra", events)

    error = assert_error(r, 400, "INVALID_ARGUMENT")
    assert error["message"] == (
        "events[2]: StageFailed: no field 'attempt_note', 'host' in schema_version 1"
    )
    assert error["details"]["fields"] == ["attempt_note", "host"]
    assert await stack.store.head(workspace) == 0
