"""Retries, timeouts, compensation, fallbacks, dead letters, undo and cancel on the real server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from actor_helpers import idle, transitions, wait_terminal

from stageline.actors.builtin import default_actors
from stageline.actors.channels import CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.events import RunSubmitted, StageFailed, StageStarted
from stageline.actors.operations import RunOperations
from stageline.actors.pipeline import (
    MEMORY_INGEST,
    Pipeline,
    PipelineCatalog,
    RetryPolicy,
    StageSpec,
)
from stageline.actors.stage import StageContext, StageResult
from stageline.actors.submit import Submitter
from stageline.actors.worker import Worker, WorkerConfig
from stageline.errors import Conflict, NotFound
from stageline.events import keys
from stageline.events.envelope import NO_STREAM, new_event
from stageline.events.redis_store import RedisEventStore

FAST = RetryPolicy(max_retries=2, backoff_seconds=0.05, backoff_multiplier=2)


def flaky(
    fallback: str | None = None, *, timeout: float = 5.0, retry: RetryPolicy = FAST
) -> StageSpec:
    return StageSpec(
        name="flaky",
        actor="flaky",
        timeout_seconds=timeout,
        retry=RetryPolicy(
            max_retries=retry.max_retries,
            backoff_seconds=retry.backoff_seconds,
            backoff_multiplier=retry.backoff_multiplier,
            fallback=fallback,
        ),
    )


PIPELINES = [
    MEMORY_INGEST,
    Pipeline(name="retrying", stages=(StageSpec(name="normalize", actor="normalize"), flaky())),
    Pipeline(name="timing-out", stages=(flaky(timeout=0.2),)),
    Pipeline(
        name="skipping", stages=(flaky("skip"), StageSpec(name="summarize", actor="summarize"))
    ),
    Pipeline(
        name="falling-back",
        stages=(
            StageSpec(name="normalize", actor="normalize"),
            flaky("summarize"),
            StageSpec(name="classify", actor="classify"),
            StageSpec(name="summarize", actor="summarize"),
        ),
    ),
    Pipeline(name="dead-end", stages=(flaky(), StageSpec(name="summarize", actor="summarize"))),
    Pipeline(name="garbling", stages=(StageSpec(name="garble", actor="garble"),)),
    Pipeline(name="lost", stages=(StageSpec(name="flaky", actor="flaky", timeout_seconds=0.2),)),
]


def garble(item: dict[str, Any], ctx: StageContext) -> StageResult:
    """Answers with text no store can hold when asked to."""
    return StageResult(output={"text": "\ud800" if item.get("garble") else "fine"})


CATALOG = PipelineCatalog(PIPELINES)


@pytest.fixture
async def setup(
    redis_store: RedisEventStore, redis_url: str
) -> AsyncIterator[tuple[Submitter, RunOperations]]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    bus = CommandBus(client)
    actors = default_actors()
    actors.register("garble", garble)
    config = WorkerConfig(
        poll_ms=20, consumer="w-recovery", abandon_grace_seconds=0.1, max_deliveries=2
    )
    worker = Worker(redis_store, redis_url, CATALOG, actors, config)
    await worker.start()
    try:
        yield Submitter(redis_store, CATALOG, bus), RunOperations(redis_store, CATALOG, actors, bus)
    finally:
        await worker.stop()
        await client.aclose()


async def run_events(store: RedisEventStore, workspace: str, run_id: str) -> list[tuple[str, dict]]:
    return [(e.type, e.data) for e in await store.read_stream(workspace, keys.run_stream(run_id))]


async def test_failed_attempts_are_retried_until_the_stage_succeeds(
    setup: tuple[Submitter, RunOperations], redis_store: RedisEventStore, workspace: str
) -> None:
    submitter, _ = setup
    run = await submitter.submit(workspace, "retrying", {"text": "x", "flaky": {"fail_times": 2}})
    assert await wait_terminal(redis_store, workspace, [run.run_id]) == {run.run_id: "RunCompleted"}
    counts = await transitions(redis_store, workspace, run.run_id)
    assert [counts[("StageFailed", 1, a)] for a in (1, 2)] == [1, 1]
    assert counts[("StageCompleted", 1, 3)] == 1
    failures = [
        d for t, d in await run_events(redis_store, workspace, run.run_id) if t == "StageFailed"
    ]
    assert all(f["will_retry"] and f["retry_at"] for f in failures)


async def test_a_stage_past_its_timeout_is_a_failed_attempt(
    setup: tuple[Submitter, RunOperations], redis_store: RedisEventStore, workspace: str
) -> None:
    submitter, _ = setup
    run = await submitter.submit(
        workspace, "timing-out", {"text": "x", "flaky": {"sleep_seconds": 1}}
    )
    assert await wait_terminal(redis_store, workspace, [run.run_id]) == {run.run_id: "RunFailed"}
    failures = [
        d for t, d in await run_events(redis_store, workspace, run.run_id) if t == "StageFailed"
    ]
    assert [f["error_type"] for f in failures] == ["TimeoutError"] * 3
    assert [f["will_retry"] for f in failures] == [True, True, False]


async def test_exhausted_retries_compensate_effects_then_skip(
    setup: tuple[Submitter, RunOperations], redis_store: RedisEventStore, workspace: str
) -> None:
    submitter, _ = setup
    run = await submitter.submit(
        workspace, "skipping", {"text": "x y z", "flaky": {"fail_times": 9}}
    )
    assert await wait_terminal(redis_store, workspace, [run.run_id]) == {run.run_id: "RunCompleted"}
    events = await redis_store.read_stream(workspace, keys.run_stream(run.run_id))
    applied = [str(e.event_id) for e in events if e.type == "FlakyEffectApplied"]
    reverted = [e.data["compensates"] for e in events if e.type == "FlakyEffectReverted"]
    assert len(applied) == 3 and sorted(reverted) == sorted(applied)
    compensated = next(e for e in events if e.type == "StageCompensated")
    assert sorted(compensated.data["compensates"]) == sorted(applied)
    skipped = next(e.data for e in events if e.type == "StageSkipped")
    assert (skipped["next_stage"], skipped["next_index"]) == ("summarize", 1)
    assert (await transitions(redis_store, workspace, run.run_id))[("StageCompleted", 1, 1)] == 1


async def test_exhausted_retries_continue_at_the_fallback_stage(
    setup: tuple[Submitter, RunOperations], redis_store: RedisEventStore, workspace: str
) -> None:
    submitter, _ = setup
    run = await submitter.submit(
        workspace, "falling-back", {"text": "x", "flaky": {"permanent": True}}
    )
    assert await wait_terminal(redis_store, workspace, [run.run_id]) == {run.run_id: "RunCompleted"}
    counts = await transitions(redis_store, workspace, run.run_id)
    assert counts[("StageFailed", 1, 1)] == 1  # permanent: no retries
    assert counts[("StageStarted", 2, 1)] == 0  # classify was jumped over
    assert counts[("StageCompleted", 3, 1)] == 1


async def test_exhausted_without_fallback_fails_to_the_dead_letters_then_retry_completes(
    setup: tuple[Submitter, RunOperations], redis_store: RedisEventStore, workspace: str
) -> None:
    submitter, operations = setup
    run = await submitter.submit(workspace, "dead-end", {"text": "x", "flaky": {"fail_times": 3}})
    assert await wait_terminal(redis_store, workspace, [run.run_id]) == {run.run_id: "RunFailed"}
    failed = [
        d for t, d in await run_events(redis_store, workspace, run.run_id) if t == "RunFailed"
    ]
    assert failed[0]["dead_letter"]
    with pytest.raises(Conflict):
        await operations.cancel(workspace, run.run_id)
    result = await operations.retry(workspace, run.run_id)
    assert result.changed and result.status == "processing"
    assert await wait_terminal(redis_store, workspace, [run.run_id]) == {run.run_id: "RunCompleted"}
    types = [t for t, _ in await run_events(redis_store, workspace, run.run_id)]
    assert (
        types.index("RunRetried") < types.index("DeadLetterRedriven") < types.index("RunCompleted")
    )
    assert (await transitions(redis_store, workspace, run.run_id))[("StageCompleted", 0, 4)] == 1
    with pytest.raises(Conflict):
        await operations.retry(workspace, run.run_id)


async def test_undo_of_a_dead_lettered_run_closes_its_dead_letter(
    setup: tuple[Submitter, RunOperations], redis_store: RedisEventStore, workspace: str
) -> None:
    submitter, operations = setup
    run = await submitter.submit(workspace, "dead-end", {"text": "x", "flaky": {"permanent": True}})
    assert await wait_terminal(redis_store, workspace, [run.run_id]) == {run.run_id: "RunFailed"}
    await operations.undo(workspace, run.run_id)
    events = await run_events(redis_store, workspace, run.run_id)
    dead_letter = next(d["dead_letter"] for t, d in events if t == "RunFailed")
    assert ("DeadLetterDiscarded", {"dead_letter": dead_letter, "reason": "undo"}) in events
    assert [t for t, _ in events][-1] == "RunCompensated"


async def test_undo_compensates_every_stage_in_reverse_and_twice_is_harmless(
    setup: tuple[Submitter, RunOperations], redis_store: RedisEventStore, workspace: str
) -> None:
    submitter, operations = setup
    run = await submitter.submit(workspace, "memory-ingest", {"text": "Alice met Bob in Berlin"})
    await wait_terminal(redis_store, workspace, [run.run_id])
    before = await redis_store.read_stream(workspace, keys.run_stream(run.run_id))
    first = await operations.undo(workspace, run.run_id)
    assert first.changed and first.status == "compensated"
    after = await redis_store.read_stream(workspace, keys.run_stream(run.run_id))
    assert after[: len(before)] == before  # nothing edited, nothing deleted
    added = after[len(before) :]
    mentions = {str(e.event_id) for e in before if e.type == "EntityMentioned"}
    assert len(mentions) == 3
    assert {e.data["compensates"] for e in added if e.type == "EntityMentionRetracted"} == mentions
    compensated_stages = [e.data["stage"] for e in added if e.type == "StageCompensated"]
    assert compensated_stages == ["summarize", "extract", "classify", "normalize"]
    assert added[-1].type == "RunCompensated"
    second = await operations.undo(workspace, run.run_id)
    assert not second.changed
    assert (
        await redis_store.stream_version(workspace, keys.run_stream(run.run_id))
        == after[-1].version
    )


async def test_cancel_stops_the_run_at_the_next_stage_boundary(
    setup: tuple[Submitter, RunOperations],
    redis_store: RedisEventStore,
    workspace: str,
    redis_url: str,
) -> None:
    broker = aioredis.Redis.from_url(redis_url)
    submitter, operations = setup
    run = await submitter.submit(
        workspace, "skipping", {"text": "x", "flaky": {"sleep_seconds": 0.5}}
    )
    stream = keys.run_stream(run.run_id)
    async with asyncio.timeout(10):  # wait until the flaky stage is running
        while not any(  # noqa: ASYNC110 - polling the log, not an in-process event
            e.type == "StageStarted" for e in await redis_store.read_stream(workspace, stream)
        ):
            await asyncio.sleep(0.01)
    result = await operations.cancel(workspace, run.run_id, reason="test")
    assert result.changed
    await idle(broker, "flaky")  # the in-flight attempt finished, and was discarded
    types = [t for t, _ in await run_events(redis_store, workspace, run.run_id)]
    assert types[-1] == "RunCancelled"
    assert "StageCompleted" not in types
    assert not (await operations.cancel(workspace, run.run_id)).changed
    await broker.aclose()


async def test_operations_on_an_unknown_run_are_not_found(
    setup: tuple[Submitter, RunOperations], workspace: str
) -> None:
    _, operations = setup
    for op in (operations.undo, operations.retry, operations.cancel):
        with pytest.raises(NotFound):
            await op(workspace, "no-such-run")


async def test_unstorable_output_fails_only_its_own_run(
    setup: tuple[Submitter, RunOperations], redis_store: RedisEventStore, workspace: str
) -> None:
    submitter, _ = setup
    bad = await submitter.submit(workspace, "garbling", {"text": "x", "garble": True})
    good = await submitter.submit(workspace, "garbling", {"text": "y"})
    done = await wait_terminal(redis_store, workspace, [bad.run_id, good.run_id])
    assert done == {bad.run_id: "RunFailed", good.run_id: "RunCompleted"}
    failed = [
        d for t, d in await run_events(redis_store, workspace, bad.run_id) if t == "StageFailed"
    ]
    assert [(f["error_type"], f["permanent"], f["will_retry"]) for f in failed] == [
        ("InvalidEvent", True, False)
    ]


async def test_a_stage_whose_attempts_keep_being_lost_gives_up_to_the_dead_letters(
    setup: tuple[Submitter, RunOperations], redis_store: RedisEventStore, workspace: str
) -> None:
    submitter, _ = setup
    run_id = str(uuid.uuid4())
    stream = keys.run_stream(run_id)
    submitted = RunSubmitted(
        pipeline="lost", pipeline_version=1, stages=["flaky"], input={"text": "x"}
    )
    lost_once = StageFailed(
        stage="flaky",
        index=0,
        attempt=1,
        error_type="AttemptAbandoned",
        error="lost",
        will_retry=True,
    )
    # two workers took the stage and died holding it (the worker allows max_deliveries=2)
    await redis_store.append(
        workspace,
        stream,
        [
            new_event(submitted),
            new_event(StageStarted(stage="flaky", index=0, attempt=1)),
            new_event(lost_once),
            new_event(StageStarted(stage="flaky", index=0, attempt=2)),
        ],
        NO_STREAM,
    )
    stale = StageCommand(
        workspace=workspace,
        run_id=run_id,
        pipeline="lost",
        pipeline_version=1,
        index=0,
        version=0,
        item={"text": "x"},
    )
    await submitter.bus.publish([("flaky", stale)])
    assert await wait_terminal(redis_store, workspace, [run_id]) == {run_id: "RunFailed"}
    events = await redis_store.read_stream(workspace, stream)
    failures = [
        (e.data["attempt"], e.data["error_type"], e.data["will_retry"])
        for e in events
        if e.type == "StageFailed"
    ]
    assert failures == [(1, "AttemptAbandoned", True), (2, "AttemptAbandoned", False)]
    assert events[-1].data["dead_letter"]
    assert not any(e.data.get("attempt") == 3 for e in events if e.type == "StageStarted")
