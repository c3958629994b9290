"""How the runtime records an attempt: its start with its result, or on its own first."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from actor_helpers import transitions

from stageline.actors import commands
from stageline.actors.attempt import Attempt
from stageline.actors.channels import CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.events import RunCompleted, StageStarted
from stageline.actors.pipeline import Pipeline, PipelineCatalog, StageSpec
from stageline.actors.runtime import StageRuntime
from stageline.actors.schedule import scheduled_entry
from stageline.actors.stage import ActorRegistry, StageContext, StageResult
from stageline.actors.submit import Submitter
from stageline.actors.worker import Worker, WorkerConfig, claim_poll_ms
from stageline.events import keys
from stageline.events.envelope import ANY, NewEvent, RecordedEvent, new_event, uuid4
from stageline.events.redis_store import RedisEventStore
from stageline.events.store import AppendRequest, AppendResult


class RecordingStore:
    """The store, noting the event types of every ``append_batch`` call, request by request."""

    def __init__(self, store: RedisEventStore) -> None:
        self.store = store
        self.calls: list[list[list[str]]] = []

    async def append_batch(
        self, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | Exception]:
        self.calls.append([[e.type for e in r.events] for r in requests])
        return await self.store.append_batch(requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class Setup:
    """A worker (not started: its runtime is called directly) for a plain stage and an async one."""

    def __init__(self, store: RedisEventStore, url: str, broker: aioredis.Redis) -> None:
        tag = uuid.uuid4().hex[:8]
        self.plain, self.coro = f"plain-{tag}", f"coro-{tag}"
        self.runs = 0
        actors = ActorRegistry()
        actors.register(self.plain, self._plain)
        actors.register(self.coro, self._coro)
        self.pipeline = Pipeline(
            name=f"rt-{tag}",
            stages=(
                StageSpec(name="plain", actor=self.plain),
                StageSpec(name="coro", actor=self.coro),
            ),
        )
        catalog = PipelineCatalog([self.pipeline])
        self.worker = Worker(store, url, catalog, actors, WorkerConfig(consumer=f"rt-{tag}"))
        self.store = RecordingStore(store)
        self.worker.runtime.store = self.store
        self.submitter = Submitter(store, catalog, CommandBus(broker))
        self.broker = broker

    def _plain(self, item: dict[str, Any], ctx: StageContext) -> StageResult:
        self.runs += 1
        return StageResult(output={"plain": True})

    async def _coro(self, item: dict[str, Any], ctx: StageContext) -> StageResult:
        await asyncio.sleep(0)
        return StageResult(output={"coro": True})

    async def submit(self, workspace: str) -> StageCommand:
        run = await self.submitter.submit(workspace, self.pipeline.name, {"text": "x"})
        return StageCommand(
            workspace=workspace, run_id=run.run_id, pipeline=self.pipeline.name,
            pipeline_version=1, index=0, version=0, item={"text": "x"},
        )  # fmt: skip

    async def handed_on(self) -> list[StageCommand]:
        """The commands waiting on the async stage's channel."""
        entries = await self.broker.xrange(keys.stage_channel(self.coro))
        return [commands.decode(fields[b"__data__"]) for _, fields in entries]

    async def close(self) -> None:
        await self.broker.delete(keys.stage_channel(self.coro), keys.stage_channel(self.plain))
        await self.worker.client.aclose()


@pytest.fixture
async def setup(
    redis_store: RedisEventStore, redis_url: str, broker: aioredis.Redis
) -> AsyncIterator[Setup]:
    s = Setup(redis_store, redis_url, broker)
    yield s
    await s.close()


async def test_plain_stage_records_its_start_with_its_result_in_one_append(
    setup: Setup, redis_store: RedisEventStore, workspace: str
) -> None:
    command = await setup.submit(workspace)
    await setup.worker.runtime.handle(setup.plain, [command])
    assert setup.store.calls == [[["StageStarted", "StageCompleted"]]]
    [next_command] = await setup.handed_on()
    assert next_command.index == 1 and next_command.version == 2

    await setup.worker.runtime.handle(setup.coro, [next_command])  # marked: start, then result
    assert setup.store.calls[1:] == [[["StageStarted"]], [["StageCompleted", "RunCompleted"]]]
    events = await redis_store.read_stream(workspace, keys.run_stream(command.run_id))
    assert [e.type for e in events] == [
        "RunSubmitted", "StageStarted", "StageCompleted", "StageStarted", "StageCompleted",
        "RunCompleted",
    ]  # fmt: skip


class Publishes:
    """The bus's ``publish`` calls: forwards (by index), scheduled count, acknowledged ids."""

    def __init__(self, bus: CommandBus) -> None:
        self.calls: list[tuple[list[int], int, list[bytes]]] = []
        publish = bus.publish

        async def spy(items: Any, *, scheduled: Any = (), ack: Any = None) -> None:
            self.calls.append(([c.index for _, c in items], len(scheduled), list(ack[1])))
            await publish(items, scheduled=scheduled, ack=ack)

        bus.publish = spy  # type: ignore[method-assign]


async def read_entries(setup: Setup, copies: int = 1) -> tuple[list[StageCommand], list[bytes]]:
    """The plain stage's channel read by its group, the submitter's command on it ``copies``
    times: the commands and their entry ids."""
    channel, group = keys.stage_channel(setup.plain), keys.stage_group(setup.plain)
    await setup.worker.bus.ensure_groups([setup.plain])  # at 0: the submitter's entry too
    [(_, submitted)] = await setup.broker.xrange(channel)
    for _ in range(copies - 1):
        await setup.broker.xadd(channel, submitted)
    [(_, entries)] = await setup.broker.xreadgroup(group, "t", {channel: ">"})
    assert len(entries) == copies
    return [commands.decode(f[b"__data__"]) for _, f in entries], [e for e, _ in entries]


async def pending(setup: Setup) -> int:
    channel, group = keys.stage_channel(setup.plain), keys.stage_group(setup.plain)
    return int((await setup.broker.xpending(channel, group))["pending"])


async def test_a_result_append_hands_the_run_on_and_acknowledges_its_command(
    setup: Setup, workspace: str
) -> None:
    await setup.submit(workspace)
    batch, entries = await read_entries(setup)
    published = Publishes(setup.worker.runtime.bus)

    await setup.worker.runtime.handle(setup.plain, batch, ack=entries)

    assert setup.worker.runtime.outbox  # the channels are on the store's server
    assert setup.store.calls == [[["StageStarted", "StageCompleted"]]]
    [next_command] = await setup.handed_on()
    assert (next_command.index, next_command.version) == (1, 2)
    assert await pending(setup) == 0
    assert published.calls == [([], 0, [])]  # nothing left to send: no round trip


async def test_a_command_whose_append_lost_is_acknowledged_once_decided(
    setup: Setup, workspace: str
) -> None:
    await setup.submit(workspace)
    batch, entries = await read_entries(setup, copies=2)  # delivered twice, in one batch
    published = Publishes(setup.worker.runtime.bus)

    await setup.worker.runtime.handle(setup.plain, batch, ack=entries)

    # one append wins, hands on and acknowledges its entry; the other clashes and is decided
    # (its stage is done: hand on again, as a lost hand-off would need), then sent and
    # acknowledged with the batch's last step
    assert [c.version for c in await setup.handed_on()] == [2, 2]
    assert published.calls == [([1], 0, entries[1:])]
    assert await pending(setup) == 0


async def test_redelivered_command_records_its_start_before_it_runs(
    setup: Setup, workspace: str
) -> None:
    command = await setup.submit(workspace)
    await setup.worker.runtime.handle(setup.plain, [command], redelivered=True)
    assert setup.store.calls == [[["StageStarted"]], [["StageCompleted"]]]


async def test_unmarked_attempt_the_run_moved_under_is_decided_then_started_marked(
    setup: Setup, redis_store: RedisEventStore, workspace: str
) -> None:
    command = await setup.submit(workspace)
    stream = keys.run_stream(command.run_id)
    # the run moved past the command's version without starting the stage (a client's own event)
    note = NewEvent(type="NoteAdded", data={"text": "by hand"})
    await redis_store.append(workspace, stream, [note], ANY)

    await setup.worker.runtime.handle(setup.plain, [command])

    assert setup.store.calls == [
        [["StageStarted", "StageCompleted"]],  # at version 0: clashes, nothing recorded
        [["StageStarted"]],  # decide_start: begin at version 1, marked
        [["StageCompleted"]],
    ]
    assert setup.runs == 2  # its first result described nothing recorded: dropped
    counts = await transitions(redis_store, workspace, command.run_id)
    assert counts == {("StageStarted", 0, 1): 1, ("StageCompleted", 0, 1): 1}
    [next_command] = await setup.handed_on()
    assert next_command.version == 3


async def test_a_command_put_off_for_an_attempt_in_flight_runs_only_once_that_is_lost(
    setup: Setup, redis_store: RedisEventStore, broker: aioredis.Redis, workspace: str
) -> None:
    command = await setup.submit(workspace)
    stream = keys.run_stream(command.run_id)
    # a worker recorded the stage's start and died in it: the stage may crash every worker
    await redis_store.append(
        workspace, stream, [new_event(StageStarted(stage="plain", index=0, attempt=1))], 0
    )
    runtime = setup.worker.runtime
    await runtime.handle(setup.plain, [command])  # a fresh duplicate: runs, then put off
    assert setup.runs == 1
    members = await broker.zrange(keys.SCHEDULED, 0, -1)
    prefix = scheduled_entry(keys.stage_channel(setup.plain), b"")
    [put_off] = [commands.decode(m[len(prefix) :]) for m in members if m.startswith(prefix)]
    await broker.zrem(keys.SCHEDULED, *members)
    assert put_off.mark_start

    # once the attempt in flight is past its timeout, the put-off command records it lost
    # and its own start before it runs the stage, once
    now = runtime.clock
    runtime.clock = lambda: now() + 3600
    await runtime.handle(setup.plain, [put_off])
    assert setup.runs == 2
    counts = await transitions(redis_store, workspace, command.run_id)
    assert counts == {
        ("StageStarted", 0, 1): 1,
        ("StageFailed", 0, 1): 1,
        ("StageStarted", 0, 2): 1,
        ("StageCompleted", 0, 2): 1,
    }


async def test_duplicate_of_an_unmarked_attempt_records_nothing_twice(
    setup: Setup, redis_store: RedisEventStore, workspace: str
) -> None:
    command = await setup.submit(workspace)
    await asyncio.gather(
        setup.worker.runtime.handle(setup.plain, [command]),
        setup.worker.runtime.handle(setup.plain, [command]),
    )
    counts = await transitions(redis_store, workspace, command.run_id)
    assert counts == {("StageStarted", 0, 1): 1, ("StageCompleted", 0, 1): 1}


async def test_a_command_no_pipeline_here_runs_is_dead_lettered_once(
    setup: Setup, redis_store: RedisEventStore, workspace: str
) -> None:
    def unknown(run_id: str) -> StageCommand:
        return StageCommand(
            workspace=workspace, run_id=run_id, pipeline="elsewhere", pipeline_version=1,
            index=0, version=0, item={},
        )  # fmt: skip

    command = unknown("r1")
    # one entry handled twice: a redelivery (the batch was handled, its acknowledgement lost)
    for _ in range(2):
        await setup.worker.runtime.handle(setup.plain, [command], ack=[b"1-0"])
    # the same command in a new entry (a redrive, a nudge), and another command
    await setup.worker.runtime.handle(setup.plain, [command], ack=[b"2-0"])
    await setup.worker.runtime.handle(setup.plain, [unknown("r2")], ack=[b"3-0"])
    events = await redis_store.read_stream(workspace, "dead-letters")
    assert [(e.type, e.data["run_id"]) for e in events] == [
        ("DeadLettered", "r1"),
        ("DeadLettered", "r1"),
        ("DeadLettered", "r2"),
    ]


async def one_stage_timing_out(
    redis_store: RedisEventStore,
    redis_url: str,
    broker: aioredis.Redis,
    workspace: str,
    stage: Any,
    **register: Any,
) -> list[RecordedEvent]:
    """A run of one stage of ``stage`` with a timeout of 0.1 s, its command handled once
    by a worker's runtime: the run's events."""
    actors = ActorRegistry()
    actor = f"{stage.__name__}-{uuid.uuid4().hex[:8]}"
    actors.register(actor, stage, **register)
    pipeline = Pipeline(name=actor, stages=(
        StageSpec(name=stage.__name__, actor=actor, timeout_seconds=0.1),
    ))  # fmt: skip
    catalog = PipelineCatalog([pipeline])
    worker = Worker(redis_store, redis_url, catalog, actors, WorkerConfig(consumer=actor))
    try:
        run = await Submitter(redis_store, catalog, CommandBus(broker)).submit(
            workspace, pipeline.name, {}
        )
        command = StageCommand(
            workspace=workspace, run_id=run.run_id, pipeline=pipeline.name, pipeline_version=1,
            index=0, version=0, item={},
        )  # fmt: skip
        await asyncio.wait_for(worker.runtime.handle(actor, [command]), 5)
        return await redis_store.read_stream(workspace, keys.run_stream(run.run_id))
    finally:
        await broker.delete(keys.stage_channel(actor))
        await worker.client.aclose()


async def test_plain_function_returning_an_awaitable_runs_under_the_stage_timeout(
    redis_store: RedisEventStore, redis_url: str, broker: aioredis.Redis, workspace: str
) -> None:
    def lazy(item: dict[str, Any], ctx: StageContext) -> Any:
        return asyncio.sleep(5, result=StageResult())

    events = await one_stage_timing_out(
        redis_store, redis_url, broker, workspace, lazy, mark_start=True
    )
    failed = [e for e in events if e.type == "StageFailed"]
    assert failed and "exceeded its timeout" in failed[0].data["error"]


async def test_a_slow_attempt_does_not_hold_back_its_batch_nor_take_it_along_when_stopped(
    redis_store: RedisEventStore, redis_url: str, broker: aioredis.Redis, workspace: str
) -> None:
    actors = ActorRegistry()
    released = asyncio.Event()

    async def waits(item: dict[str, Any], ctx: StageContext) -> StageResult:
        if item["slow"]:
            await released.wait()
        return StageResult()

    actor = f"waits-{uuid.uuid4().hex[:8]}"
    actors.register(actor, waits)
    pipeline = Pipeline(name=actor, stages=(StageSpec(name="waits", actor=actor),))
    catalog = PipelineCatalog([pipeline])
    worker = Worker(redis_store, redis_url, catalog, actors, WorkerConfig(consumer=actor))
    submitter = Submitter(redis_store, catalog, CommandBus(broker))

    async def command(slow: bool) -> StageCommand:
        run = await submitter.submit(workspace, pipeline.name, {"slow": slow})
        return StageCommand(
            workspace=workspace, run_id=run.run_id, pipeline=pipeline.name, pipeline_version=1,
            index=0, version=0, item={"slow": slow},
        )  # fmt: skip

    async def completed(c: StageCommand) -> bool:
        counts = await transitions(redis_store, workspace, c.run_id)
        return counts.get(("StageCompleted", 0, 1)) == 1

    try:
        # a batch of one slow and two quick attempts: the quick ones are recorded at once
        batch = [await command(True), await command(False), await command(False)]
        handling = asyncio.create_task(worker.runtime.handle(actor, batch))
        async with asyncio.timeout(5):
            while not all([await completed(c) for c in batch[1:]]):  # noqa: ASYNC110 - the log
                await asyncio.sleep(0.02)
        assert not await completed(batch[0]) and not handling.done()
        # stopped meanwhile (a redeploy): the quick ones stay recorded, the slow one is
        # recorded abandoned for another worker to start again, and nothing runs on
        handling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handling
        released.set()
        await asyncio.sleep(0.05)
        counts = await transitions(redis_store, workspace, batch[0].run_id)
        assert counts == {("StageStarted", 0, 1): 1, ("StageFailed", 0, 1): 1}

        # not stopped: the slow one is recorded once it ends
        released.clear()
        batch = [await command(True), await command(False)]
        handling = asyncio.create_task(worker.runtime.handle(actor, batch))
        async with asyncio.timeout(5):
            while not await completed(batch[1]):  # noqa: ASYNC110 - polling the log
                await asyncio.sleep(0.02)
        released.set()
        await asyncio.wait_for(handling, 5)
        assert await completed(batch[0])
    finally:
        await broker.delete(keys.stage_channel(actor))
        await worker.client.aclose()


async def test_a_stop_records_dropped_attempts_abandoned_until_their_stage_lost_too_many(
    redis_store: RedisEventStore, redis_url: str, broker: aioredis.Redis, workspace: str
) -> None:
    actors = ActorRegistry()

    async def forever(item: dict[str, Any], ctx: StageContext) -> StageResult:
        await asyncio.sleep(60)
        return StageResult()

    actor = f"forever-{uuid.uuid4().hex[:8]}"
    actors.register(actor, forever)
    pipeline = Pipeline(name=actor, stages=(StageSpec(name="forever", actor=actor),))
    catalog = PipelineCatalog([pipeline])
    config = WorkerConfig(consumer=actor, max_deliveries=5)  # at most 5 attempts lost
    worker = Worker(redis_store, redis_url, catalog, actors, config)
    submitter = Submitter(redis_store, catalog, CommandBus(broker))

    async def command(lost: int) -> StageCommand:
        run = await submitter.submit(workspace, pipeline.name, {})
        return StageCommand(
            workspace=workspace, run_id=run.run_id, pipeline=pipeline.name, pipeline_version=1,
            index=0, version=0, item={}, lost=lost,
        )  # fmt: skip

    try:
        # the fourth lost attempt is recorded so; the fifth is left to be presumed lost,
        # when the stage gives up (a stage that stops its workers must not loop forever)
        batch = [await command(3), await command(4)]
        handling = asyncio.create_task(worker.runtime.handle(actor, batch))
        async with asyncio.timeout(5):
            while not all(  # noqa: ASYNC110 - polling the log
                [await transitions(redis_store, workspace, c.run_id) for c in batch]
            ):
                await asyncio.sleep(0.02)
        handling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handling
        counts = [await transitions(redis_store, workspace, c.run_id) for c in batch]
        assert counts == [
            {("StageStarted", 0, 1): 1, ("StageFailed", 0, 1): 1},
            {("StageStarted", 0, 1): 1},
        ]
        on_channel = [
            commands.decode(fields[b"__data__"])
            for _, fields in await broker.xrange(keys.stage_channel(actor))
        ]
        [handed_on] = [c for c in on_channel if c.attempt > 1]  # the rest are the submitter's
        assert (handed_on.run_id, handed_on.attempt, handed_on.lost) == (batch[0].run_id, 2, 4)
    finally:
        await broker.delete(keys.stage_channel(actor))
        await worker.client.aclose()


async def swallows_cancellation(item: dict[str, Any], ctx: StageContext) -> StageResult:
    """A stage that, cut off, catches the cancellation and returns as if it had finished."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        return StageResult(output={"finished": True})
    return StageResult()


async def test_a_stage_that_swallows_its_timeout_fails_by_timing_out(
    redis_store: RedisEventStore, redis_url: str, broker: aioredis.Redis, workspace: str
) -> None:
    events = await one_stage_timing_out(
        redis_store, redis_url, broker, workspace, swallows_cancellation
    )
    # failed as a stage that let the cancellation through does, not completed
    assert [e.type for e in events] == [
        "RunSubmitted", "StageStarted", "StageFailed", "RunFailed",
    ]  # fmt: skip
    failed = events[2].data
    assert failed["error_type"] == "TimeoutError"
    assert "exceeded its timeout of 0.1s" in failed["error"]


async def test_a_stage_that_swallows_its_batch_being_stopped_leaves_no_result() -> None:
    spec = StageSpec(name="swallows", actor="swallows")
    command = StageCommand(
        workspace="w", run_id="r", pipeline="p", pipeline_version=1, index=0, version=0, item={}
    )
    a = Attempt(command, Pipeline(name="p", stages=(spec,)), spec, 1, 1, "started")
    running = asyncio.ensure_future(
        StageRuntime._wait(a, swallows_cancellation({}, None), time.perf_counter())  # type: ignore[arg-type]
    )
    await asyncio.sleep(0.01)

    running.cancel()  # as the batch's runner does when the worker stops
    with pytest.raises(asyncio.CancelledError):
        await running

    # cancelled, as had the stage let the cancellation through: nothing to record
    assert running.cancelled() and a.outcome is None


def test_coroutine_functions_are_marked_and_plain_ones_are_not_unless_asked() -> None:
    actors = ActorRegistry()

    def plain(item: dict[str, Any], ctx: StageContext) -> StageResult:
        return StageResult()

    async def coro(item: dict[str, Any], ctx: StageContext) -> StageResult:
        return StageResult()

    class Callable:
        async def __call__(self, item: dict[str, Any], ctx: StageContext) -> StageResult:
            return StageResult()

    actors.register("plain", plain)
    actors.register("coro", coro)
    actors.register("callable", Callable())
    actors.register("plain-marked", plain, mark_start=True)
    actors.register("coro-unmarked", coro, mark_start=False)
    marked = {name for name in actors.names() if actors.marks_start(name)}
    assert marked == {"coro", "callable", "plain-marked"}
    assert actors.marks_start("unknown")  # fails as a stage: the careful path


def test_claimer_pauses_a_tenth_of_the_claim_idle_time_after_an_empty_scan() -> None:
    assert claim_poll_ms(WorkerConfig(poll_ms=100, claim_idle_ms=30_000)) == 3_000
    assert claim_poll_ms(WorkerConfig(poll_ms=20, claim_idle_ms=100)) == 20


def test_event_ids_are_random_version_4_uuids() -> None:
    ids = {uuid4() for _ in range(1000)} | {new_event_id() for _ in range(1000)}
    assert len(ids) == 2000
    for u in ids:
        assert u.version == 4 and u.variant == uuid.RFC_4122
        assert uuid.UUID(str(u)) == u and hash(uuid.UUID(str(u))) == hash(u)


def new_event_id() -> uuid.UUID:
    return new_event(RunCompleted()).event_id
