"""What the runtime records when one run's stage, result or compensator misbehaves: that
run's attempt fails, with the real error, and the rest of its batch goes on."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from stageline.actors import commands
from stageline.actors.builtin.flaky import FlakyEffectApplied, FlakyEffectReverted
from stageline.actors.channels import CommandBus
from stageline.actors.compensation import CompensationFailed
from stageline.actors.operations import RunOperations
from stageline.actors.pipeline import Pipeline, PipelineCatalog, RetryPolicy, StageSpec
from stageline.actors.stage import (
    ActorRegistry,
    Compensator,
    StageContext,
    StageError,
    StageResult,
)
from stageline.actors.submit import Submitter
from stageline.actors.worker import Worker, WorkerConfig
from stageline.events import keys
from stageline.events.envelope import DomainEvent, RecordedEvent
from stageline.events.redis_store import RedisEventStore

StageFn = Callable[[dict[str, Any], StageContext], Any]


def ok(item: dict[str, Any], ctx: StageContext) -> StageResult:
    return StageResult(output={"ok": True})


class Harness:
    """A worker (not started: its runtime is called directly) for a pipeline of plain stages
    ``first`` then ``second``."""

    def __init__(
        self,
        store: RedisEventStore,
        url: str,
        broker: aioredis.Redis,
        first: StageFn,
        *,
        second: StageFn = ok,
        retry: RetryPolicy | None = None,
        compensate: Compensator | None = None,
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        self.first, self.second = f"first-{tag}", f"second-{tag}"
        actors = ActorRegistry()
        actors.register(self.first, first, compensate=compensate)
        actors.register(self.second, second)
        self.actors = actors
        self.pipeline = Pipeline(
            name=f"rf-{tag}",
            stages=(
                StageSpec(name="first", actor=self.first, retry=retry or RetryPolicy()),
                StageSpec(name="second", actor=self.second),
            ),
        )
        self.catalog = PipelineCatalog([self.pipeline])
        self.worker = Worker(store, url, self.catalog, actors, WorkerConfig(consumer=tag))
        self.submitter = Submitter(store, self.catalog, CommandBus(broker))
        self.store = store
        self.broker = broker

    async def batch(self, workspace: str, texts: Sequence[str], actor: str = "") -> list[str]:
        """Submit a run per text, then handle the first stage's channel in one batch, as a
        worker reads it; returns the run ids."""
        actor = actor or self.first
        runs = [
            (await self.submitter.submit(workspace, self.pipeline.name, {"text": t})).run_id
            for t in texts
        ]
        channel, group = keys.stage_channel(actor), keys.stage_group(actor)
        await self.worker.bus.ensure_groups([actor])
        [(_, entries)] = await self.broker.xreadgroup(group, "t", {channel: ">"})
        batch = [commands.decode(f[b"__data__"]) for _, f in entries]
        await self.worker.runtime.handle(actor, batch, ack=[e for e, _ in entries])
        return runs

    async def events(self, workspace: str, run_id: str) -> list[RecordedEvent]:
        return await self.store.read_stream(workspace, keys.run_stream(run_id))

    async def pending(self, actor: str = "") -> int:
        actor = actor or self.first
        channel, group = keys.stage_channel(actor), keys.stage_group(actor)
        return int((await self.broker.xpending(channel, group))["pending"])

    async def close(self) -> None:
        await self.broker.delete(keys.stage_channel(self.first), keys.stage_channel(self.second))
        await self.worker.client.aclose()


@pytest.fixture
async def harness(
    redis_store: RedisEventStore, redis_url: str, broker: aioredis.Redis
) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(first: StageFn, **kwargs: Any) -> Harness:
        h = Harness(redis_store, redis_url, broker, first, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.close()


def types(events: Sequence[RecordedEvent]) -> list[str]:
    return [e.type for e in events]


def failed(events: Sequence[RecordedEvent]) -> dict[str, Any]:
    [data] = [e.data for e in events if e.type == "StageFailed"]
    return data


async def test_a_retry_delay_past_the_float_range_waits_a_day_and_crashes_nothing(
    harness: Callable[..., Harness], workspace: str
) -> None:
    def boom(item: dict[str, Any], ctx: StageContext) -> StageResult:
        raise ValueError("boom")

    huge = RetryPolicy(max_retries=3, backoff_seconds=1e308, backoff_multiplier=1e308)
    h = harness(boom, retry=huge)
    [run] = await h.batch(workspace, ["x"])
    events = await h.events(workspace, run)
    assert types(events) == ["RunSubmitted", "StageStarted", "StageFailed"]
    data = failed(events)
    assert data["will_retry"] and data["error"] == "boom"
    retry_at = data["retry_at"]
    retry_at = retry_at if isinstance(retry_at, datetime) else datetime.fromisoformat(retry_at)
    assert retry_at - datetime.now(UTC) <= timedelta(days=1)
    assert await h.pending() == 0


BAD_OUTPUTS: dict[str, dict[Any, Any]] = {
    "object": {"o": object()},
    "bigint": {"i": 2**80},
    "nan": {"scores": [1.0, {"x": float("nan")}]},
    "inf": {"worst": float("-inf")},
    "intkey": {1: "one"},
}


def by_text(item: dict[str, Any], ctx: StageContext) -> StageResult:
    return StageResult(output=BAD_OUTPUTS.get(item["text"], {"ok": True}))


async def test_an_output_that_cannot_be_handed_on_fails_only_its_run_for_good(
    harness: Callable[..., Harness], workspace: str
) -> None:
    h = harness(by_text)
    texts = ["good", *BAD_OUTPUTS, "good"]
    runs = dict(zip(range(len(texts)), await h.batch(workspace, texts), strict=True))
    assert await h.pending() == 0  # the whole batch is acknowledged
    handed_on = await h.broker.xrange(keys.stage_channel(h.second))
    assert len(handed_on) == 2  # the healthy runs went on
    errors = {}
    for i, text in enumerate(texts):
        events = await h.events(workspace, runs[i])
        if text == "good":
            assert types(events) == ["RunSubmitted", "StageStarted", "StageCompleted"]
            continue
        assert types(events) == ["RunSubmitted", "StageStarted", "StageFailed", "RunFailed"]
        data = failed(events)
        assert data["permanent"] and not data["will_retry"]
        errors[text] = (data["error_type"], data["error"])
    assert errors["object"][0] == errors["bigint"][0] == "InvalidEvent"
    assert "Encoding objects of type object is unsupported" in errors["object"][1]
    assert "stage='first'" in errors["object"][1]
    assert errors["nan"] == (
        "InvalidResult",
        f"actor {h.first!r} returned a number JSON cannot carry (nan) at output.scores[1].x: "
        "NaN and infinity cannot be stored (stage='first')",
    )
    assert "(-inf) at output.worst" in errors["inf"][1]
    assert "output has a key of type int (1): keys must be strings" in errors["intkey"][1]


async def test_a_last_stage_output_holding_nan_fails_for_good(
    harness: Callable[..., Harness], workspace: str
) -> None:
    h = harness(ok, second=by_text)
    [good, bad] = await h.batch(workspace, ["good", "nan"])
    channel, group = keys.stage_channel(h.second), keys.stage_group(h.second)
    await h.worker.bus.ensure_groups([h.second])
    [(_, entries)] = await h.broker.xreadgroup(group, "t", {channel: ">"})
    batch = [commands.decode(f[b"__data__"]) for _, f in entries]
    await h.worker.runtime.handle(h.second, batch, ack=[e for e, _ in entries])
    assert types(await h.events(workspace, good))[-1] == "RunCompleted"
    events = await h.events(workspace, bad)
    assert types(events)[-2:] == ["StageFailed", "RunFailed"]
    assert failed(events)["error_type"] == "InvalidResult"


class Scored(DomainEvent, frozen=True, kw_only=True):
    topic = "Scored"

    score: float
    detail: dict[str, Any] = {}


def scoring(item: dict[str, Any], ctx: StageContext) -> StageResult:
    kind = item["text"]
    if kind == "nan-field":
        return StageResult(events=[Scored(score=1.0), Scored(score=float("nan"))])
    if kind == "inf-nested":
        return StageResult(events=[Scored(score=0.5, detail={"parts": [1.0, float("inf")]})])
    if kind == "stage-error-nan":
        raise StageError("gave up", events=[Scored(score=float("-inf"))])
    return StageResult(events=[Scored(score=0.5)])


async def test_events_holding_a_number_json_cannot_carry_fail_only_their_run_for_good(
    harness: Callable[..., Harness], workspace: str
) -> None:
    h = harness(scoring, retry=RetryPolicy(max_retries=3, backoff_seconds=0))
    texts = ["good", "nan-field", "inf-nested", "stage-error-nan"]
    runs = await h.batch(workspace, texts)
    assert await h.pending() == 0
    got = {}
    for text, run in zip(texts, runs, strict=True):
        events = await h.events(workspace, run)
        if text == "good":
            assert types(events) == ["RunSubmitted", "StageStarted", "StageCompleted", "Scored"]
            continue
        # nothing of the attempt stored (no Scored with a null in it), and no retry
        assert types(events) == ["RunSubmitted", "StageStarted", "StageFailed", "RunFailed"]
        data = failed(events)
        assert data["permanent"] and not data["will_retry"]
        assert data["error_type"] == "InvalidResult"
        got[text] = data["error"]
    assert got["nan-field"] == (
        f"actor {h.first!r} returned a StageResult whose events hold a number JSON cannot "
        "carry (nan) at events[1].score (a Scored): NaN and infinity cannot be stored "
        "(stage='first')"
    )
    assert "(inf) at events[0].detail.parts[1] (a Scored)" in got["inf-nested"]
    assert got["stage-error-nan"].startswith(
        f"actor {h.first!r} raised a StageError whose events hold a number JSON cannot carry "
        "(-inf) at events[0].score (a Scored)"
    )
    assert got["stage-error-nan"].endswith("; its error: gave up (stage='first')")


def shaped(item: dict[str, Any], ctx: StageContext) -> Any:
    kind = item["text"]
    if kind == "list-output":
        return StageResult(output=["a"])  # type: ignore[arg-type]
    if kind == "str-event":
        return StageResult(events=["not an event"])  # type: ignore[list-item]
    if kind == "stage-error-unencodable":
        raise StageError("failed", events=[FlakyEffectApplied(key=object(), attempt=1)])  # type: ignore[arg-type]
    if kind == "stage-error-event":
        raise StageError("gave up", events=[{"not": "an event"}])  # type: ignore[list-item]
    return StageResult(output={"ok": True})


async def test_a_result_or_stage_error_of_the_wrong_shape_fails_only_its_run(
    harness: Callable[..., Harness], workspace: str
) -> None:
    h = harness(shaped)
    texts = ["list-output", "good", "str-event", "stage-error-event", "stage-error-unencodable"]
    runs = await h.batch(workspace, texts)
    assert await h.pending() == 0
    got = {}
    for text, run in zip(texts, runs, strict=True):
        events = await h.events(workspace, run)
        if text == "good":
            assert types(events)[-1] == "StageCompleted"
            continue
        data = failed(events)
        assert data["permanent"] and data["error_type"] == "InvalidResult"
        got[text] = data["error"]
    assert "output is a list, not a dict" in got["list-output"]
    assert "events hold a str, not a DomainEvent" in got["str-event"]
    assert "StageError whose events cannot be encoded" in got["stage-error-unencodable"]
    assert got["stage-error-event"].endswith(
        "not a DomainEvent; its error: gave up (stage='first')"
    )


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def unprintable(item: dict[str, Any], ctx: StageContext) -> StageResult:
    raise Unprintable


async def test_an_exception_whose_message_cannot_be_read_fails_only_its_attempt(
    harness: Callable[..., Harness], workspace: str
) -> None:
    h = harness(unprintable)
    [run] = await h.batch(workspace, ["x"])
    data = failed(await h.events(workspace, run))
    assert (data["error_type"], data["error"]) == (
        "Unprintable",
        "(its message could not be read: RuntimeError)",
    )


def not_a_result(item: dict[str, Any], ctx: StageContext) -> Any:
    return None if item["text"] == "none" else {"plain": "dict"}


async def test_an_actor_returning_no_stage_result_fails_for_good_saying_what_it_returned(
    harness: Callable[..., Harness], workspace: str
) -> None:
    h = harness(not_a_result, retry=RetryPolicy(max_retries=3, backoff_seconds=0))
    runs = await h.batch(workspace, ["none", "dict"])
    got = []
    for run in runs:
        events = await h.events(workspace, run)
        assert types(events) == ["RunSubmitted", "StageStarted", "StageFailed", "RunFailed"]
        data = failed(events)
        assert data["permanent"] and not data["will_retry"]
        got.append((data["error_type"], data["error"]))
    assert got == [
        (
            "InvalidResult",
            f"actor {h.first!r} returned NoneType, not a StageResult (stage='first')",
        ),
        ("InvalidResult", f"actor {h.first!r} returned dict, not a StageResult (stage='first')"),
    ]


def effect_then_fail(item: dict[str, Any], ctx: StageContext) -> StageResult:
    if item["text"] == "good":
        return StageResult(output={"ok": True})
    raise StageError("no luck", events=[FlakyEffectApplied(key=item["text"], attempt=1)])


def raising(effects: Sequence[RecordedEvent]) -> list[DomainEvent]:
    raise ValueError("cannot reverse that")


def a_dict(effects: Sequence[RecordedEvent]) -> list[DomainEvent]:
    return {"not": "a list"}  # type: ignore[return-value]


def unencodable(effects: Sequence[RecordedEvent]) -> list[DomainEvent]:
    return [FlakyEffectReverted(compensates=str(e.event_id), key=object()) for e in effects]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("compensate", "fallback", "why"),
    [
        (raising, None, "ValueError: cannot reverse that"),
        (raising, "skip", "ValueError: cannot reverse that"),
        (a_dict, None, "TypeError: returned a dict, not a list of events"),
        (unencodable, "skip", "InvalidEvent: event cannot be encoded"),
    ],
)
async def test_a_compensator_that_fails_fails_its_run_into_the_dead_letters_saying_so(
    harness: Callable[..., Harness],
    workspace: str,
    compensate: Compensator,
    fallback: str | None,
    why: str,
) -> None:
    h = harness(effect_then_fail, compensate=compensate, retry=RetryPolicy(fallback=fallback))
    bad, good = await h.batch(workspace, ["bad", "good"])
    assert await h.pending() == 0
    assert types(await h.events(workspace, good))[-1] == "StageCompleted"
    events = await h.events(workspace, bad)
    # the effect stays, uncompensated; the run fails whatever the fallback
    assert types(events) == [
        "RunSubmitted", "StageStarted", "StageFailed", "FlakyEffectApplied", "RunFailed",
    ]  # fmt: skip
    run_failed = events[-1].data
    assert run_failed["dead_letter"] and run_failed["stage"] == "first"
    assert run_failed["error"].startswith("no luck; then compensating stage 'first' failed: ")
    assert why in run_failed["error"]


async def test_undo_of_a_run_whose_compensator_fails_is_a_conflict_naming_it(
    harness: Callable[..., Harness], workspace: str, redis_store: RedisEventStore
) -> None:
    def effect(item: dict[str, Any], ctx: StageContext) -> StageResult:
        return StageResult(events=[FlakyEffectApplied(key="k", attempt=1)])

    h = harness(effect, compensate=raising)
    [run] = await h.batch(workspace, ["x"])
    before = await h.events(workspace, run)
    operations = RunOperations(redis_store, h.catalog, h.actors, h.worker.bus)
    with pytest.raises(CompensationFailed) as caught:
        await operations.undo(workspace, run)
    assert caught.value.code == "CONFLICT"
    assert str(caught.value) == (
        "compensating stage 'first' failed: ValueError: cannot reverse that "
        "(stage='first', error_type='ValueError')"
    )
    assert await h.events(workspace, run) == before


def deep(item: dict[str, Any], ctx: StageContext) -> StageResult:
    nested: Any = 1.0
    for _ in range(100_000):
        nested = [nested]
    return StageResult(output={"deep": nested})


async def test_an_output_nested_too_deeply_fails_only_its_attempt(
    harness: Callable[..., Harness], workspace: str
) -> None:
    h = harness(deep)
    [run] = await h.batch(workspace, ["x"])
    data = failed(await h.events(workspace, run))
    assert data["permanent"] and "nested too deeply" in data["error"]
