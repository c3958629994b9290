"""Stage actors on the real embedded server: delivery, duplicates, crashes and claiming."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import pytest
import redis.asyncio as aioredis
from actor_helpers import idle, transitions, wait_terminal

from stageline.actors import commands
from stageline.actors.builtin import default_actors
from stageline.actors.channels import CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.deadletters import STREAM
from stageline.actors.events import StageStarted
from stageline.actors.pipeline import (
    MEMORY_INGEST,
    Pipeline,
    PipelineCatalog,
    RetryPolicy,
    StageSpec,
)
from stageline.actors.stage import ActorRegistry, StageContext, StageResult
from stageline.actors.submit import SubmitResult, Submitter
from stageline.actors.worker import Worker, WorkerConfig, _StreamSub
from stageline.errors import Conflict
from stageline.events import keys
from stageline.events.envelope import new_event
from stageline.events.redis_store import RedisEventStore

SAMPLES = [
    json.loads(line)
    for line in resources.files("stageline.data").joinpath("samples.jsonl").read_text().splitlines()
]

SLOW = Pipeline(
    name="slow",
    stages=(
        StageSpec(name="nap", actor="nap", timeout_seconds=0.5),
        StageSpec(name="normalize", actor="normalize"),
    ),
)
FAILING = Pipeline(name="failing", stages=(StageSpec(name="boom", actor="boom"),))
ONE_RETRY = Pipeline(
    name="one-retry",
    stages=(
        StageSpec(
            name="flaky",
            actor="flaky",
            timeout_seconds=0.5,
            retry=RetryPolicy(max_retries=1, backoff_seconds=0.05),
        ),
    ),
)


def actors() -> ActorRegistry:
    registry = default_actors()

    async def nap(item: dict[str, Any], ctx: StageContext) -> StageResult:
        await asyncio.sleep(float(item.get("nap", 0)))
        return StageResult(output={"napped": True})

    def boom(item: dict[str, Any], ctx: StageContext) -> StageResult:
        raise ValueError("stage exploded")

    registry.register("nap", nap)
    registry.register("boom", boom)
    return registry


CATALOG = PipelineCatalog([MEMORY_INGEST, SLOW, FAILING, ONE_RETRY])


@pytest.fixture
def submitter(redis_store: RedisEventStore, broker: aioredis.Redis) -> Submitter:
    return Submitter(redis_store, CATALOG, CommandBus(broker))


def make_worker(store: RedisEventStore, url: str, consumer: str, **config: Any) -> Worker:
    cfg = WorkerConfig(
        poll_ms=20, claim_idle_ms=config.pop("claim_idle_ms", 60_000), consumer=consumer, **config
    )
    return Worker(store, url, CATALOG, actors(), cfg)


@pytest.fixture
async def worker(redis_store: RedisEventStore, redis_url: str) -> AsyncIterator[Worker]:
    w = make_worker(redis_store, redis_url, "w-main")
    await w.start()
    yield w
    await w.stop()


async def test_samples_complete_with_one_transition_per_stage(
    worker: Worker, submitter: Submitter, redis_store: RedisEventStore, workspace: str
) -> None:
    runs = [(await submitter.submit(workspace, "memory-ingest", item)).run_id for item in SAMPLES]
    assert set((await wait_terminal(redis_store, workspace, runs)).values()) == {"RunCompleted"}
    for run_id in runs:
        counts = await transitions(redis_store, workspace, run_id)
        stages = len(MEMORY_INGEST.stages)
        for index in range(stages):
            assert counts[("StageStarted", index, 1)] == 1
            assert counts[("StageCompleted", index, 1)] == 1
        assert sum(counts.values()) == 2 * stages
    events = await redis_store.read_stream(workspace, keys.run_stream(runs[0]))
    types = [e.type for e in events]
    assert {"MemoryNormalized", "MemoryClassified", "EntityMentioned", "MemorySummarized"} <= set(
        types
    )
    # causation chains every transition to the one before it
    by_id = {str(e.event_id): e for e in events}
    completed = [e for e in events if e.type == "StageCompleted"]
    assert all(by_id[e.causation_id].type == "StageStarted" for e in completed if e.causation_id)


async def test_duplicate_commands_record_nothing_twice(
    worker: Worker,
    submitter: Submitter,
    redis_store: RedisEventStore,
    broker: aioredis.Redis,
    workspace: str,
) -> None:
    result = await submitter.submit(workspace, "memory-ingest", SAMPLES[0])
    first = StageCommand(
        workspace=workspace,
        run_id=result.run_id,
        pipeline="memory-ingest",
        pipeline_version=MEMORY_INGEST.version,
        index=0,
        version=0,
        item=SAMPLES[0],
    )
    bus = CommandBus(broker)
    await bus.publish([("normalize", first)] * 3)  # racing duplicates while the run flows
    await wait_terminal(redis_store, workspace, [result.run_id])
    await bus.publish([("normalize", first), ("classify", first)])  # late duplicates
    for actor in ("normalize", "classify", "extract", "discover", "summarize"):
        await idle(broker, actor)
    counts = await transitions(redis_store, workspace, result.run_id)
    assert set(counts.values()) == {1}
    assert len(counts) == 2 * len(MEMORY_INGEST.stages)


async def test_redelivered_batch_after_a_crash_before_ack_is_harmless(
    redis_store: RedisEventStore, redis_url: str, submitter: Submitter, workspace: str
) -> None:
    w = make_worker(redis_store, redis_url, "w-direct")  # not started: we call its runtime directly
    try:
        result = await submitter.submit(workspace, "memory-ingest", SAMPLES[1])
        command = StageCommand(
            workspace=workspace,
            run_id=result.run_id,
            pipeline="memory-ingest",
            pipeline_version=MEMORY_INGEST.version,
            index=0,
            version=0,
            item=SAMPLES[1],
        )
        await w.runtime.handle("normalize", [command])
        version = await redis_store.stream_version(workspace, keys.run_stream(result.run_id))
        await w.runtime.handle("normalize", [command])  # the same entry, delivered again
        assert (
            await redis_store.stream_version(workspace, keys.run_stream(result.run_id)) == version
        )
    finally:
        await w.client.aclose()


async def completed_after_a_lost_start(
    store: RedisEventStore, url: str, workspace: str, submitted: SubmitResult, stage: str
) -> str:
    """A worker took the run's first command, recorded its start and died before any
    result; another worker then runs the run to completion. The run's stream."""
    stream = keys.run_stream(submitted.run_id)
    started = new_event(StageStarted(stage=stage, index=0, attempt=1))
    await store.append(workspace, stream, [started], expected_version=0)
    w = make_worker(store, url, "w-after-lost", abandon_grace_seconds=0.2)
    await w.start()
    try:
        assert await wait_terminal(store, workspace, [submitted.run_id]) == {
            submitted.run_id: "RunCompleted"
        }
    finally:
        await w.stop()
    return stream


async def test_attempt_left_unfinished_by_a_dead_worker_is_abandoned_then_retried(
    redis_store: RedisEventStore, redis_url: str, submitter: Submitter, workspace: str
) -> None:
    result = await submitter.submit(workspace, "slow", {"text": "nap time"})
    stream = await completed_after_a_lost_start(redis_store, redis_url, workspace, result, "nap")
    counts = await transitions(redis_store, workspace, result.run_id)
    assert counts[("StageFailed", 0, 1)] == 1  # the lost attempt, recorded as abandoned
    assert counts[("StageStarted", 0, 2)] == 1
    assert counts[("StageCompleted", 0, 2)] == 1
    failed = [
        e for e in await redis_store.read_stream(workspace, stream) if e.type == "StageFailed"
    ]
    assert failed[0].data["error_type"] == "AttemptAbandoned"


async def test_an_attempt_lost_with_its_worker_does_not_use_up_the_stages_retries(
    redis_store: RedisEventStore, redis_url: str, submitter: Submitter, workspace: str
) -> None:
    # one retry; the stage fails on its first two attempts, and the first is lost
    result = await submitter.submit(workspace, "one-retry", {"flaky": {"fail_times": 2}})
    stream = await completed_after_a_lost_start(redis_store, redis_url, workspace, result, "flaky")
    failed = [
        (e.data["attempt"], e.data["error_type"], e.data["will_retry"])
        for e in await redis_store.read_stream(workspace, stream)
        if e.type == "StageFailed"
    ]
    assert failed == [(1, "AttemptAbandoned", True), (2, "StageError", True)]
    counts = await transitions(redis_store, workspace, result.run_id)
    assert counts[("StageCompleted", 0, 3)] == 1
    # each attempt after the first follows from the failure that brought it (lineage)
    events = await redis_store.read_stream(workspace, stream)
    failures = {e.data["attempt"]: str(e.event_id) for e in events if e.type == "StageFailed"}
    starts = {e.data["attempt"]: e.causation_id for e in events if e.type == "StageStarted"}
    assert (starts[2], starts[3]) == (failures[1], failures[2])


async def test_pending_entries_of_a_dead_consumer_are_claimed_by_another_worker(
    redis_store: RedisEventStore,
    redis_url: str,
    submitter: Submitter,
    broker: aioredis.Redis,
    workspace: str,
) -> None:
    await CommandBus(broker).ensure_groups(["normalize"])
    runs = [
        (await submitter.submit(workspace, "memory-ingest", item)).run_id for item in SAMPLES[:10]
    ]
    # a worker reads the entries and is killed before acknowledging them
    taken = await broker.xreadgroup(
        keys.stage_group("normalize"),
        "dead-worker",
        {keys.stage_channel("normalize"): ">"},
        count=100,
    )
    assert len(taken[0][1]) >= 10
    w = make_worker(redis_store, redis_url, "w-claimer", claim_idle_ms=200)
    await w.start()
    try:
        done = await wait_terminal(redis_store, workspace, runs)
        assert set(done.values()) == {"RunCompleted"}
        await idle(broker, "normalize")
    finally:
        await w.stop()
    pending = await broker.xpending(keys.stage_channel("normalize"), keys.stage_group("normalize"))
    assert pending["pending"] == 0


async def test_failing_stage_fails_the_run_with_its_error(
    worker: Worker, submitter: Submitter, redis_store: RedisEventStore, workspace: str
) -> None:
    result = await submitter.submit(workspace, "failing", {"text": "x"})
    assert await wait_terminal(redis_store, workspace, [result.run_id]) == {
        result.run_id: "RunFailed"
    }
    events = await redis_store.read_stream(workspace, keys.run_stream(result.run_id))
    failed = next(e for e in events if e.type == "StageFailed")
    assert (failed.data["error_type"], failed.data["error"]) == ("ValueError", "stage exploded")


async def test_unreadable_entry_is_dead_lettered_in_the_default_workspace(
    worker: Worker, broker: aioredis.Redis, redis_store: RedisEventStore
) -> None:
    before = await redis_store.stream_version("default", STREAM)
    raw = b"\xc1 not msgpack"
    await broker.xadd(keys.stage_channel("classify"), {"__data__": raw})
    await idle(broker, "classify")
    added = await redis_store.read_stream("default", STREAM, from_version=before + 1)
    assert [e.type for e in added] == ["DeadLettered"]
    entry = added[0].data
    assert (entry["actor"], entry["deliveries"], entry["command"]) == ("classify", 1, None)
    assert "undecodable" in entry["error"]
    assert base64.b64decode(entry["raw"]) == raw


async def test_command_for_a_pipeline_the_worker_lacks_is_dead_lettered_then_guarded(
    worker: Worker, broker: aioredis.Redis, redis_store: RedisEventStore, workspace: str
) -> None:
    stray = StageCommand(
        workspace=workspace,
        run_id="r-x",
        pipeline="unknown",
        pipeline_version=MEMORY_INGEST.version,
        index=0,
        version=0,
        item={},
    )
    await CommandBus(broker).publish([("normalize", stray)])
    await idle(broker, "normalize")
    [entry] = await redis_store.read_stream(workspace, STREAM)
    assert entry.type == "DeadLettered"
    assert entry.data["command"]["pipeline"] == "unknown" and "no pipeline" in entry.data["error"]
    letters = worker.dead_letters
    dead_letter = entry.data["dead_letter"]
    position = await letters.discard(workspace, STREAM, dead_letter, "not ours")
    assert position == await redis_store.head(workspace)
    with pytest.raises(Conflict):
        await letters.redrive(workspace, dead_letter)
    with pytest.raises(Conflict):
        await letters.discard(workspace, STREAM, dead_letter, "again")
    assert await redis_store.stream_version(workspace, STREAM) == 1


async def test_two_workers_share_the_groups_without_double_transitions(
    redis_store: RedisEventStore, redis_url: str, submitter: Submitter, workspace: str
) -> None:
    workers = [make_worker(redis_store, redis_url, f"w-pair-{i}", batch_size=16) for i in range(2)]
    for w in workers:
        await w.start()
    try:
        runs = [
            (await submitter.submit(workspace, "memory-ingest", SAMPLES[i % len(SAMPLES)])).run_id
            for i in range(200)
        ]
        assert set((await wait_terminal(redis_store, workspace, runs, within=60)).values()) == {
            "RunCompleted"
        }
    finally:
        for w in workers:
            await w.stop()
    for run_id in runs[:50]:
        assert set((await transitions(redis_store, workspace, run_id)).values()) == {1}


def test_command_wire_format_round_trips() -> None:
    command = StageCommand(
        workspace="w",
        run_id="r",
        pipeline="p",
        pipeline_version=2,
        index=1,
        version=5,
        item={"a": [1]},
    )
    assert commands.decode(commands.encode(command)) == command


def test_a_subscription_is_read_as_it_is_without_a_prefix() -> None:
    # FastStream adds the broker's prefix to a subscription for every read, by copying it
    sub = _StreamSub("stageline:actor:a", group="g", consumer="c", batch=True)
    assert sub.add_prefix("") is sub
    prefixed = sub.add_prefix("p:")
    assert (prefixed.name, prefixed.group, sub.name) == (
        "p:stageline:actor:a",
        "g",
        "stageline:actor:a",
    )
