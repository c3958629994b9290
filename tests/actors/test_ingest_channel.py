"""The ingest channel on the real embedded server: a worker appends what publishers XADD."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from faststream.redis import RedisBroker
from redis.exceptions import ConnectionError as RedisConnectionError

from stageline.actors.builtin import default_actors
from stageline.actors.channels import CommandBus
from stageline.actors.deadletters import STREAM, DeadLetters
from stageline.actors.pipeline import MEMORY_INGEST, PipelineCatalog
from stageline.actors.worker import Worker, WorkerConfig
from stageline.errors import Conflict
from stageline.events import keys
from stageline.events.envelope import NewEvent
from stageline.events.redis_store import RedisEventStore


def make_worker(store: RedisEventStore, url: str, workspace: str, **config: Any) -> Worker:
    cfg = WorkerConfig(poll_ms=20, consumer=f"ingest-{workspace}", workspace=workspace, **config)
    return Worker(store, url, PipelineCatalog([MEMORY_INGEST]), default_actors(), cfg)


@pytest.fixture
async def worker(
    redis_store: RedisEventStore, redis_url: str, workspace: str
) -> AsyncIterator[Worker]:
    w = make_worker(redis_store, redis_url, workspace)
    await w.start()
    yield w
    await w.stop()


async def publish(broker: aioredis.Redis, message: Any) -> bytes:
    """``XADD`` one entry as a plain client would: JSON (or any bytes) in ``__data__``."""
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    entry_id: bytes = await broker.xadd(keys.INGEST_CHANNEL, {"__data__": data})
    return entry_id


async def drained(broker: aioredis.Redis) -> None:
    """Wait until the ingest group has delivered and acknowledged everything."""
    async with asyncio.timeout(10):
        while True:
            groups = await broker.xinfo_groups(keys.INGEST_CHANNEL)
            if all(g["pending"] == 0 and not g.get("lag") for g in groups):
                return
            await asyncio.sleep(0.02)


def events(*types: str, **data: Any) -> list[dict[str, Any]]:
    return [{"type": t, "data": {"n": i, **data}} for i, t in enumerate(types)]


async def test_published_events_land_in_the_stream_and_the_log_in_order(
    worker: Worker,
    broker: aioredis.Redis,
    redis_store: RedisEventStore,
    redis_url: str,
    workspace: str,
) -> None:
    async with RedisBroker(redis_url) as publisher:  # FastStream's own envelope
        await publisher.publish(
            {"workspace": workspace, "stream": "order-1", "events": events("A", "B")},
            stream=keys.INGEST_CHANNEL,
            correlation_id="corr-fs",
        )
    await publish(
        broker,
        {"stream": "order-1", "expected_version": 1, "events": events("C", x="y")},
    )  # no workspace: the worker's default
    await drained(broker)

    stored = await redis_store.read_stream(workspace, "order-1")
    assert [(e.type, e.version, e.data) for e in stored] == [
        ("A", 0, {"n": 0}),
        ("B", 1, {"n": 1}),
        ("C", 2, {"n": 0, "x": "y"}),
    ]
    assert [e.correlation_id for e in stored[:2]] == ["corr-fs", "corr-fs"]
    log = await redis_store.read_log(workspace)
    assert [e.type for e in log] == ["A", "B", "C"]
    assert [e.position for e in log] == [1, 2, 3]
    assert await redis_store.stream_version(workspace, STREAM) == -1  # no dead letter


async def test_known_types_are_checked_and_typed_as_over_http(
    worker: Worker, broker: aioredis.Redis, redis_store: RedisEventStore, workspace: str
) -> None:
    await publish(
        broker,
        {
            "workspace": workspace,
            "stream": "dl",
            "events": [{"type": "DeadLetterDiscarded", "data": {"dead_letter": "x"}}],
        },
    )
    await drained(broker)
    [stored] = await redis_store.read_stream(workspace, "dl")
    assert stored.data == {"dead_letter": "x", "reason": ""}  # defaults filled in, as HTTP


async def test_a_redelivered_entry_appends_nothing_twice(
    redis_store: RedisEventStore,
    redis_url: str,
    broker: aioredis.Redis,
    workspace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = make_worker(redis_store, redis_url, workspace, claim_idle_ms=200)
    real_ack = worker._ack_ingest
    lost: list[bytes] = []

    async def ack_lost_once(ids: list[bytes]) -> None:
        if not lost:
            lost.extend(ids)  # the append landed; the acknowledgement never does
            raise RedisConnectionError("connection lost before XACK")
        await real_ack(ids)

    monkeypatch.setattr(worker, "_ack_ingest", ack_lost_once)
    await worker.start()
    try:
        entry = await publish(
            broker,
            {
                "workspace": workspace,
                "stream": "once",
                "expected_version": "no_stream",
                "events": events("A", "B"),
            },
        )
        await drained(broker)  # the claimer took it over and handled it again
    finally:
        await worker.stop()
    assert lost == [entry]
    stored = await redis_store.read_stream(workspace, "once")
    assert [e.type for e in stored] == ["A", "B"]
    assert len(await redis_store.read_log(workspace)) == 2
    assert await redis_store.stream_version(workspace, STREAM) == -1  # not a clash


BAD = [
    (b'{"stream": "s", "events": [', "malformed JSON"),
    ({"stream": "s", "events": [{"type": "A", "data": {}, "colour": "red"}]}, "events[0].colour"),
    ({"stream": "bad stream", "events": events("A")}, "stream name must be"),
    ({"stream": "s", "events": []}, "events: "),
    ({"stream": "s", "events": [{"type": "RunSubmitted", "data": {}}]}, "events[0]: RunSubmitted"),
    ({"stream": "s", "expected_version": 7, "events": events("A")}, "is at version -1"),
    ({"stream": "ontology", "events": events("A")}, "use POST /v1/ontology/patterns"),
    ({"stream": "dead-letters", "events": events("A")}, "use POST /v1/dlq/{id}/redrive"),
    ({"stream": "pipeline-foo", "events": events("A")}, "use POST /v1/pipelines"),
    (
        {
            "stream": "run-x",
            "events": [{"type": "StageStarted", "data": {"stage": "a", "index": 0}}],
        },
        "refused: a run stream starts with RunSubmitted",
    ),
]


async def test_bad_messages_are_dead_lettered_with_their_reason_and_a_good_one_still_lands(
    worker: Worker, broker: aioredis.Redis, redis_store: RedisEventStore, workspace: str
) -> None:
    for message, _ in BAD:
        await publish(broker, message)
    await publish(broker, {"stream": "s", "events": events("Good")})
    await drained(broker)

    assert [e.type for e in await redis_store.read_stream(workspace, "s")] == ["Good"]
    letters = await redis_store.read_stream(workspace, STREAM)
    assert [e.type for e in letters] == ["DeadLettered"] * len(BAD)
    # an append's refusal is recorded after the entries that never became one
    by_raw = {base64.b64decode(letter.data["raw"]): letter.data for letter in letters}
    for message, reason in BAD:
        letter = by_raw[message if isinstance(message, bytes) else json.dumps(message).encode()]
        assert reason in letter["error"], letter["error"]
        assert letter["actor"] == keys.INGEST_ACTOR
        assert letter["deliveries"] == 1


async def test_an_entry_reusing_a_held_event_id_for_another_event_is_dead_lettered(
    worker: Worker, broker: aioredis.Redis, redis_store: RedisEventStore, workspace: str
) -> None:
    held = str(uuid.uuid4())
    placed = {"stream": "o", "events": [{"event_id": held, "type": "Placed", "data": {"n": 1}}]}
    await publish(broker, placed)
    await drained(broker)
    cancelled = {"event_id": held, "type": "Cancelled", "data": {}}
    await publish(broker, {"stream": "o", "events": [cancelled, *events("Note")]})
    await publish(broker, {"stream": "o", "events": [events("Note")[0], placed["events"][0]]})
    await publish(broker, placed)  # published again: a repeat, not a dead letter
    await drained(broker)

    assert [e.type for e in await redis_store.read_stream(workspace, "o")] == ["Placed"]
    clash, partial = await redis_store.read_stream(workspace, STREAM)
    assert (
        f"events[0] has event_id {held}, which stream 'o' holds at version 0"
        in (clash.data["error"])
    )
    assert f"holds events[1] (event_id {held}, at version 0)" in partial.data["error"]


async def test_an_entry_larger_than_an_http_body_may_be_is_dead_lettered(
    redis_store: RedisEventStore, redis_url: str, broker: aioredis.Redis, workspace: str
) -> None:
    w = make_worker(redis_store, redis_url, workspace, max_body_bytes=2048)
    await w.start()
    try:
        await publish(broker, {"stream": "big", "events": events("A", pad="x" * 2048)})
        await publish(broker, {"stream": "big", "events": events("B", pad="x" * 1900)})
        await drained(broker)
    finally:
        await w.stop()
    assert [e.type for e in await redis_store.read_stream(workspace, "big")] == ["B"]
    [letter] = await redis_store.read_stream(workspace, STREAM)
    assert "over the 2048 an append takes (STAGELINE_MAX_BODY_BYTES" in letter.data["error"]


async def test_a_bad_message_is_dead_lettered_in_the_workspace_it_names(
    worker: Worker, broker: aioredis.Redis, redis_store: RedisEventStore, workspace: str
) -> None:
    other = f"{workspace}-o"
    await publish(broker, {"workspace": other, "stream": "s", "events": [{"type": "A"}]})
    await drained(broker)
    [letter] = await redis_store.read_stream(other, STREAM)
    assert "events[0].data" in letter.data["error"]
    assert await redis_store.stream_version(workspace, STREAM) == -1


async def test_redrive_puts_a_dead_lettered_entry_back_on_the_channel(
    worker: Worker, broker: aioredis.Redis, redis_store: RedisEventStore, workspace: str
) -> None:
    await publish(broker, {"stream": "late", "expected_version": 0, "events": events("B")})
    await drained(broker)
    [letter] = await redis_store.read_stream(workspace, STREAM)
    dead_letter = letter.data["dead_letter"]
    await redis_store.append(workspace, "late", [NewEvent(type="A", data={})])  # now at version 0

    letters = DeadLetters(redis_store, CommandBus(broker), worker.actors.names)
    await letters.redrive(workspace, dead_letter)
    await drained(broker)
    assert [e.type for e in await redis_store.read_stream(workspace, "late")] == ["A", "B"]
    with pytest.raises(Conflict):
        await letters.redrive(workspace, dead_letter)


async def test_redrive_refuses_an_entry_naming_another_workspace(
    worker: Worker, broker: aioredis.Redis, redis_store: RedisEventStore, workspace: str
) -> None:
    letters = DeadLetters(redis_store, CommandBus(broker), worker.actors.names)
    raw = json.dumps({"workspace": "elsewhere", "stream": "s", "events": []}).encode()
    dead_letter = await letters.add(
        workspace, keys.INGEST_ACTOR, raw=raw, error="copied by hand", deliveries=1
    )
    with pytest.raises(Conflict, match="workspace 'elsewhere'"):
        await letters.redrive(workspace, dead_letter)


async def test_the_channel_keeps_at_most_channel_maxlen_acknowledged_entries(
    redis_store: RedisEventStore, redis_url: str, broker: aioredis.Redis, workspace: str
) -> None:
    w = make_worker(redis_store, redis_url, workspace, channel_maxlen=3)
    await w.start()
    try:
        for _ in range(10):
            await publish(
                broker, {"workspace": workspace, "stream": "trimmed", "events": events("A")}
            )
        await drained(broker)
    finally:
        await w.stop()

    assert await redis_store.stream_version(workspace, "trimmed") == 9  # every one landed
    assert await broker.xlen(keys.INGEST_CHANNEL) <= 3


def run_event(type: str, **data: Any) -> dict[str, Any]:
    return {"type": type, "data": data}


async def test_a_run_takes_only_what_keeps_its_history_whole_as_over_http(
    worker: Worker, broker: aioredis.Redis, redis_store: RedisEventStore, workspace: str
) -> None:
    submitted = {"pipeline": "etl", "pipeline_version": 0, "stages": ["a"], "input": {}}
    done = run_event("StageCompleted", stage="a", index=0)
    for event in (
        run_event("RunSubmitted", **submitted),
        run_event("StageStarted", stage="a", index=0),
        done,
        done,  # the same result again, in an entry of its own: refused, not recorded twice
        run_event("RunCompleted"),
    ):
        await publish(broker, {"stream": "run-etl", "events": [event]})
    await drained(broker)

    stored = await redis_store.read_stream(workspace, "run-etl")
    assert [e.type for e in stored] == [
        "RunSubmitted",
        "StageStarted",
        "StageCompleted",
        "RunCompleted",
    ]
    [letter] = await redis_store.read_stream(workspace, STREAM)
    assert letter.data["error"] == (
        "append to stream 'run-etl' refused: events[0]: StageCompleted refused: stage 'a' "
        "has no attempt 1 running (started, without a result)"
    )
