"""A run cancelled or undone interrupts the attempt a worker is running of it (stop notices),
and records nothing more than the cancel or the undo; a lost notice leaves the attempt to
end, its result discarded, as before."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from actor_helpers import idle, wait_terminal

from stageline.actors import commands
from stageline.actors.attempt import INTERRUPTED
from stageline.actors.builtin import default_actors
from stageline.actors.channels import DATA_FIELD, CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.events import RunCancelled
from stageline.actors.operations import RunOperations
from stageline.actors.pipeline import Pipeline, PipelineCatalog, RetryPolicy, StageSpec
from stageline.actors.stage import StageContext, StageResult
from stageline.actors.stops import Running, StopListener, StopNotice, publish
from stageline.actors.submit import Submitter
from stageline.actors.worker import Worker, WorkerConfig
from stageline.events import keys
from stageline.events.envelope import DomainEvent, new_event
from stageline.events.redis_store import RedisEventStore
from stageline.projections.replay import runs_as_of

MARK, SLEEP = "stops-mark", "stops-sleep"
# a timeout and a claim time far beyond the test's: only an interruption ends the sleep early
PIPELINE = Pipeline(
    name="stops",
    stages=(
        StageSpec(name="mark", actor=MARK),
        StageSpec(
            name="sleep",
            actor=SLEEP,
            timeout_seconds=120,
            retry=RetryPolicy(max_retries=2, backoff_seconds=0),
        ),
    ),
)
CATALOG = PipelineCatalog([PIPELINE])
WITHIN = 5.0
"""How soon an interrupted stage must see its cancellation: far below its 30 s sleep."""


class Marked(DomainEvent, frozen=True, kw_only=True):
    topic = "StopsMarked"
    run: str


class Seen:
    """What the sleeping stage saw, per run."""

    def __init__(self) -> None:
        self.began: dict[str, asyncio.Event] = {}
        self.interrupted: dict[str, asyncio.Event] = {}

    def of(self, run_id: str) -> tuple[asyncio.Event, asyncio.Event]:
        began = self.began.setdefault(run_id, asyncio.Event())
        return began, self.interrupted.setdefault(run_id, asyncio.Event())


SEEN = Seen()


def mark(item: dict[str, Any], ctx: StageContext) -> StageResult:
    return StageResult(events=[Marked(run=ctx.run_id)])


async def sleep(item: dict[str, Any], ctx: StageContext) -> StageResult:
    """Sleeps ``item["sleep"]`` seconds (30) at its first attempt; with ``item["swallow"]``,
    catches the cancellation that cuts it off and returns anyway."""
    began, interrupted = SEEN.of(ctx.run_id)
    began.set()
    try:
        if ctx.attempt == 1:
            await asyncio.sleep(item.get("sleep", 30))
    except asyncio.CancelledError:
        interrupted.set()
        if item.get("swallow"):
            return StageResult(output={"swallowed": True})
        raise
    return StageResult(output={"slept": ctx.attempt})


def make_worker(store: RedisEventStore, url: str, consumer: str) -> Worker:
    actors = default_actors()
    actors.register(MARK, mark)
    actors.register(SLEEP, sleep)
    cfg = WorkerConfig(poll_ms=20, claim_idle_ms=600_000, drain_seconds=1.0, consumer=consumer)
    return Worker(store, url, CATALOG, actors, cfg)


@pytest.fixture
async def worker(redis_store: RedisEventStore, redis_url: str) -> AsyncIterator[Worker]:
    w = make_worker(redis_store, redis_url, "w-stops")
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


@pytest.fixture
def operations(redis_store: RedisEventStore, broker: aioredis.Redis) -> RunOperations:
    return RunOperations(redis_store, CATALOG, default_actors(), CommandBus(broker))


async def submit(
    store: RedisEventStore, broker: aioredis.Redis, workspace: str, **item: Any
) -> tuple[str, asyncio.Event, asyncio.Event]:
    """Submit a run and wait until its sleeping stage has begun."""
    run_id = (
        await Submitter(store, CATALOG, CommandBus(broker)).submit(workspace, "stops", item)
    ).run_id
    began, interrupted = SEEN.of(run_id)
    async with asyncio.timeout(10):
        await began.wait()
    return run_id, began, interrupted


async def types(store: RedisEventStore, workspace: str, run_id: str) -> list[str]:
    return [e.type for e in await store.read_stream(workspace, keys.run_stream(run_id))]


async def sleep_entries(broker: aioredis.Redis, run_id: str) -> list[tuple[StageCommand, bool]]:
    """The run's commands on the sleeping stage's channel, each with whether it is pending."""
    channel, group = keys.stage_channel(SLEEP), keys.stage_group(SLEEP)
    pending = {p["message_id"] for p in await broker.xpending_range(channel, group, "-", "+", 1000)}
    entries = [
        (commands.decode(fields[DATA_FIELD.encode()]), entry_id in pending)
        for entry_id, fields in await broker.xrange(channel)
    ]
    return [(c, is_pending) for c, is_pending in entries if c.run_id == run_id]


async def scheduled_for(broker: aioredis.Redis, run_id: str) -> list[bytes]:
    return [m for m in await broker.zrange(keys.SCHEDULED, 0, -1) if run_id.encode() in m]


async def assert_stopped_cleanly(
    store: RedisEventStore, broker: aioredis.Redis, workspace: str, run_id: str, status: str
) -> list[str]:
    """The interrupted attempt left no trace: no failure, retry or dead letter; its command
    acknowledged; the stage shows ``cancelled``. The run's event types."""
    await idle(broker, SLEEP)
    [(command, is_pending)] = await sleep_entries(broker, run_id)
    assert command.attempt == 1 and not is_pending
    assert await scheduled_for(broker, run_id) == []
    assert await store.read_stream(workspace, keys.DEAD_LETTERS_STREAM) == []
    events = await store.read_stream(workspace, keys.run_stream(run_id))
    (shown,) = runs_as_of(events).runs
    assert shown["status"] == status
    assert [(s["name"], s["status"]) for s in shown["stages"]] == [
        ("mark", "completed" if status == "cancelled" else "compensated"),
        ("sleep", "cancelled"),
    ]
    assert shown["stages"][1]["attempts"] == 1
    return [e.type for e in events]


BEFORE = ["RunSubmitted", "StageStarted", "StageCompleted", "StopsMarked", "StageStarted"]


async def test_a_cancel_interrupts_the_attempt_in_hand_and_records_nothing_more(
    worker: Worker,
    operations: RunOperations,
    redis_store: RedisEventStore,
    broker: aioredis.Redis,
    workspace: str,
) -> None:
    run_id, _, interrupted = await submit(redis_store, broker, workspace)
    began = time.monotonic()
    result = await operations.cancel(workspace, run_id, reason="enough")
    assert (result.status, result.changed) == ("cancelled", True)
    async with asyncio.timeout(WITHIN):  # the stage got CancelledError, not its 30 s sleep
        await interrupted.wait()
    assert time.monotonic() - began < WITHIN
    assert await wait_terminal(redis_store, workspace, [run_id]) == {run_id: "RunCancelled"}
    found = await assert_stopped_cleanly(redis_store, broker, workspace, run_id, "cancelled")
    assert found == [*BEFORE, "RunCancelled"]


async def test_an_undo_interrupts_the_attempt_in_hand_and_records_only_the_undo(
    worker: Worker,
    operations: RunOperations,
    redis_store: RedisEventStore,
    broker: aioredis.Redis,
    workspace: str,
) -> None:
    run_id, _, interrupted = await submit(redis_store, broker, workspace)
    result = await operations.undo(workspace, run_id)
    assert (result.status, result.changed) == ("compensated", True)
    async with asyncio.timeout(WITHIN):
        await interrupted.wait()
    found = await assert_stopped_cleanly(redis_store, broker, workspace, run_id, "compensated")
    assert found == [*BEFORE, "StageCompensated", "EffectCompensated", "RunCompensated"]


async def test_a_stage_that_swallows_the_cancellation_and_returns_still_records_nothing(
    worker: Worker,
    operations: RunOperations,
    redis_store: RedisEventStore,
    broker: aioredis.Redis,
    workspace: str,
) -> None:
    run_id, _, interrupted = await submit(redis_store, broker, workspace, swallow=True)
    await operations.cancel(workspace, run_id)
    async with asyncio.timeout(WITHIN):
        await interrupted.wait()
    found = await assert_stopped_cleanly(redis_store, broker, workspace, run_id, "cancelled")
    assert found == [*BEFORE, "RunCancelled"]  # its StageCompleted was not recorded


async def test_a_cancel_whose_notice_is_lost_leaves_the_attempt_to_end_as_before(
    worker: Worker, redis_store: RedisEventStore, broker: aioredis.Redis, workspace: str
) -> None:
    run_id, _, interrupted = await submit(redis_store, broker, workspace, sleep=1.0)
    # recorded as a cancel records it, but without its notice (say, sent while the
    # worker's subscription was reconnecting)
    stream = keys.run_stream(run_id)
    version = len(await redis_store.read_stream(workspace, stream)) - 1
    await redis_store.append(workspace, stream, [new_event(RunCancelled())], version)
    await idle(broker, SLEEP)
    assert not interrupted.is_set()  # it ran to its end; its result was discarded
    found = await assert_stopped_cleanly(redis_store, broker, workspace, run_id, "cancelled")
    assert found == [*BEFORE, "RunCancelled"]


async def test_a_notice_for_a_run_that_goes_on_abandons_the_attempt_and_starts_the_next(
    worker: Worker, redis_store: RedisEventStore, broker: aioredis.Redis, workspace: str
) -> None:
    # a notice is only sent once the run's end is recorded; one that comes anyway (sent by
    # hand) still records nothing wrong: the attempt was interrupted, so it is abandoned,
    # as a worker's stop abandons it, and the next attempt starts at once
    run_id, _, interrupted = await submit(redis_store, broker, workspace)
    assert await publish(broker, workspace, run_id)
    async with asyncio.timeout(WITHIN):
        await interrupted.wait()
    assert await wait_terminal(redis_store, workspace, [run_id]) == {run_id: "RunCompleted"}
    events = await redis_store.read_stream(workspace, keys.run_stream(run_id))
    failed = [e.data for e in events if e.type == "StageFailed"]
    assert [(f["attempt"], f["error_type"], f["error"], f["will_retry"]) for f in failed] == [
        (1, "AttemptAbandoned", INTERRUPTED, True)
    ]
    assert [e.type for e in events][-3:] == ["StageStarted", "StageCompleted", "RunCompleted"]


async def test_a_notice_of_another_workspace_or_run_interrupts_nothing(
    worker: Worker,
    operations: RunOperations,
    redis_store: RedisEventStore,
    broker: aioredis.Redis,
    workspace: str,
) -> None:
    run_id, _, interrupted = await submit(redis_store, broker, workspace)
    await publish(broker, f"{workspace}x", run_id)  # the same run id, another workspace
    await publish(broker, workspace, f"{run_id}x")
    await broker.publish(keys.RUN_STOPS_CHANNEL, b"not a notice")
    await asyncio.sleep(0.5)
    assert not interrupted.is_set()
    await operations.cancel(workspace, run_id)  # the listener heard past the bad notice
    async with asyncio.timeout(WITHIN):
        await interrupted.wait()


# -- Running: the runs in hand, without a server ----------------------------------------


def command(workspace: str = "ws", run_id: str = "r1") -> StageCommand:
    return StageCommand(
        workspace=workspace,
        run_id=run_id,
        pipeline="stops",
        pipeline_version=1,
        index=1,
        version=3,
        item={},
        correlation_id="c",
    )


async def test_running_cancels_the_tasks_of_the_run_it_is_told_of_only() -> None:
    running = Running()
    mine, other_ws, other_run = command(), command("ws2"), command(run_id="r2")
    running.hold([mine, other_ws, other_run])
    tasks = [asyncio.create_task(asyncio.sleep(30)) for _ in range(3)]
    for c, task in zip([mine, other_ws, other_run], tasks, strict=True):
        running.started(c, task)
    assert running.stop("ws", "r1") == 1
    await asyncio.sleep(0)
    assert [t.cancelled() for t in tasks] == [True, False, False]
    assert (running.stopped(mine), running.stopped(other_ws), running.stopped(other_run)) == (
        True,
        False,
        False,
    )
    assert running.stop("ws", "r-none") == 0  # a run this worker holds nothing of
    for task in tasks[1:]:
        task.cancel()
    running.release([mine, other_ws, other_run])
    assert len(running) == 0 and not running.stopped(mine)


def test_running_remembers_a_stop_that_comes_before_the_attempt_begins() -> None:
    running = Running()
    c = command()
    running.hold([c])
    assert running.stop("ws", "r1") == 0  # nothing running yet: the runtime will not begin it
    assert running.stopped(c)
    running.release([c])
    assert not running.stopped(c) and len(running) == 0


def test_the_listener_ignores_what_is_not_a_notice() -> None:
    running = Running()
    c = command()
    running.hold([c])
    listener = StopListener(None, running)  # type: ignore[arg-type]  # delivers, never reads
    listener.deliver(b"{")
    listener.deliver(b'{"workspace": "ws"}')
    assert not running.stopped(c)
    listener.deliver(msgspec.json.encode(StopNotice("ws", "r1")))
    assert running.stopped(c)


async def test_a_user_refused_the_channel_stops_listening_and_cancels_without_notices(
    redis_url: str, broker: aioredis.Redis, workspace: str
) -> None:
    # Redis 7+ gives a new ACL user no channel; a deployment may never grant ours
    user = f"no-channels-{workspace}"
    await broker.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], categories=["+@all"], reset_channels=True
    )
    client = aioredis.Redis.from_url(redis_url.replace("unix://", f"unix://{user}:pw@"))
    try:
        assert not await publish(client, workspace, "r1")  # refused: logged, not raised
        listener = StopListener(client, Running())
        async with asyncio.timeout(5):  # it ends rather than asking again every second
            await listener.run(asyncio.Event())
    finally:
        await client.aclose()
        await broker.acl_deluser(user)
