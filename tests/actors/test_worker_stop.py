"""A stopped worker reads nothing more, even when one of its reads missed the cancellation;
and the attempts it drops are recorded abandoned and started again at once.

On Python 3.11, redis-py sends each command through ``asyncio.wait_for``,
which loses a cancellation that comes as the send completes (CPython
gh-86296). A subscriber read cancelled by ``broker.stop()`` at that moment
used to run on: its XREADGROUP failed when the broker closed the connection,
the retry policy sent it again, and it took the next worker's first commands
(pending under the consumer, dropped by the stopped subscriber) until the
claimer's ``claim_idle_ms``. Here the lost cancellation is made to happen
every time, at the point where it happens for real.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from actor_helpers import wait_terminal
from redis.asyncio.connection import AbstractConnection

from stageline.actors import commands
from stageline.actors.attempt import STOPPED
from stageline.actors.builtin import default_actors
from stageline.actors.channels import DATA_FIELD, CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.events import RunCancelled
from stageline.actors.pipeline import Pipeline, PipelineCatalog, RetryPolicy, StageSpec
from stageline.actors.stage import ActorRegistry, StageContext, StageError, StageResult
from stageline.actors.submit import Submitter
from stageline.actors.worker import Worker, WorkerConfig
from stageline.events import keys
from stageline.events.envelope import new_event
from stageline.events.redis_store import RedisEventStore, connect
from stageline.projections.replay import runs_as_of

ACTOR = "stop-echo"
ECHO = Pipeline(name="stop-echo", stages=(StageSpec(name="echo", actor=ACTOR),))
CATALOG = PipelineCatalog([ECHO])
CHANNEL, GROUP = keys.stage_channel(ACTOR), keys.stage_group(ACTOR)


def echo_actors() -> ActorRegistry:
    registry = ActorRegistry()

    def echo(item: dict[str, Any], ctx: StageContext) -> StageResult:
        return StageResult(output=item)

    registry.register(ACTOR, echo)
    return registry


def make_worker(store: RedisEventStore, url: str) -> Worker:
    # a long block: the stop closes the connection under the read, as a short one mostly does;
    # no claimer within the test: only the subscribers can take the command
    cfg = WorkerConfig(poll_ms=500, claim_idle_ms=600_000, consumer="w-stop")
    return Worker(store, url, CATALOG, echo_actors(), cfg)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = connect(redis_url)
    yield c
    await c.aclose()


async def group(client: aioredis.Redis) -> dict[str, Any]:
    (info,) = [g for g in await client.xinfo_groups(CHANNEL) if g["name"] == GROUP.encode()]
    return dict(info)


async def test_a_read_that_missed_its_cancellation_takes_nothing_after_stop(
    redis_store: RedisEventStore,
    redis_url: str,
    client: aioredis.Redis,
    workspace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = make_worker(redis_store, redis_url)
    await first.start()
    in_send = asyncio.Event()
    armed = True
    send_command = AbstractConnection.send_command

    async def losing_the_cancellation(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        nonlocal armed
        if armed and args[:1] == ("XREADGROUP",) and CHANNEL in args:
            armed = False
            in_send.set()
            # what 3.11's wait_for does when the send completes as the cancellation comes
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)
        await send_command(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_command", losing_the_cancellation)
    async with asyncio.timeout(5):
        await in_send.wait()  # the next read of the channel is being sent
    await first.stop()

    # the next worker's first command, written as soon as the first one has stopped
    submitter = Submitter(redis_store, CATALOG, CommandBus(client))
    run = (await submitter.submit(workspace, ECHO.name, {"n": 1})).run_id
    await asyncio.sleep(1.0)  # a read left running would have sent XREADGROUP again by now
    state = await group(client)
    assert (state["pending"], state["lag"]) == (0, 1), state  # delivered to no one

    second = make_worker(redis_store, redis_url)  # the same consumer name, as after a restart
    await second.start()
    try:
        done = await wait_terminal(redis_store, workspace, [run], within=5)
    finally:
        await second.stop()
    assert done == {run: "RunCompleted"}


async def consumers(client: aioredis.Redis, channel: str, group: str) -> dict[bytes, int]:
    """Each consumer of the group, with how many entries are pending under it."""
    return {c["name"]: c["pending"] for c in await client.xinfo_consumers(channel, group)}


async def test_a_stopped_worker_leaves_the_groups_where_nothing_is_pending_under_it(
    redis_store: RedisEventStore, redis_url: str, client: aioredis.Redis
) -> None:
    await CommandBus(client).ensure_group(CHANNEL, GROUP)
    await client.xgroup_delconsumer(CHANNEL, GROUP, "w-stop")  # a test before left it pending
    await client.xadd(CHANNEL, {"junk": "1"})
    [[_, [(held, _)]]] = await client.xreadgroup(GROUP, "w-held", {CHANNEL: ">"}, count=1)
    worker = make_worker(redis_store, redis_url)
    await worker.start()
    read = await consumers(client, CHANNEL, GROUP)
    ingest = await consumers(client, keys.INGEST_CHANNEL, keys.INGEST_GROUP)
    assert b"w-stop" in read and b"w-stop" in ingest
    await worker.stop()
    assert b"w-stop" not in await consumers(client, CHANNEL, GROUP)
    assert b"w-stop" not in await consumers(client, keys.INGEST_CHANNEL, keys.INGEST_GROUP)

    # one with an entry pending under it stays, the entry with it, for a claimer to take
    held_by_worker = make_worker(redis_store, redis_url)
    await held_by_worker.start()
    await client.xclaim(CHANNEL, GROUP, "w-stop", 0, [held])
    await held_by_worker.stop()
    assert (await consumers(client, CHANNEL, GROUP))[b"w-stop"] == 1
    await client.xack(CHANNEL, GROUP, held)
    await client.xgroup_delconsumer(CHANNEL, GROUP, "w-held")


# -- attempts dropped by a stop ----------------------------------------------------

SLOW_ACTOR = "stop-slow"
# a timeout and a claim time far beyond the test's: only the stop's record can hand it on
SLOW = Pipeline(
    name="stop-slow",
    stages=(
        StageSpec(
            name="slow",
            actor=SLOW_ACTOR,
            timeout_seconds=120,
            retry=RetryPolicy(max_retries=1, backoff_seconds=0),
        ),
    ),
)
SLOW_CATALOG = PipelineCatalog([SLOW])
SLOW_CHANNEL, SLOW_GROUP = keys.stage_channel(SLOW_ACTOR), keys.stage_group(SLOW_ACTOR)


async def slow(item: dict[str, Any], ctx: StageContext) -> StageResult:
    """Runs on and on at its first attempt, fails its second, completes its third."""
    if ctx.attempt == 1:
        await asyncio.sleep(120)
    if ctx.attempt == 2:
        raise StageError("fails once")
    return StageResult(output={"done_at": ctx.attempt})


def slow_worker(store: RedisEventStore, url: str, consumer: str) -> Worker:
    actors = default_actors()
    actors.register(SLOW_ACTOR, slow)
    cfg = WorkerConfig(poll_ms=20, claim_idle_ms=600_000, drain_seconds=1.0, consumer=consumer)
    return Worker(store, url, SLOW_CATALOG, actors, cfg)


async def started(store: RedisEventStore, workspace: str, run_id: str) -> None:
    """Wait until the run's first attempt has recorded its start."""
    async with asyncio.timeout(5):
        while not any(  # noqa: ASYNC110 - polling the log, not an in-process event
            e.type == "StageStarted"
            for e in await store.read_stream(workspace, keys.run_stream(run_id))
        ):
            await asyncio.sleep(0.02)


async def channel_entries(client: aioredis.Redis, run_id: str) -> list[tuple[StageCommand, bool]]:
    """The run's commands on the slow stage's channel, each with whether it is pending."""
    pending = {
        p["message_id"]
        for p in await client.xpending_range(SLOW_CHANNEL, SLOW_GROUP, "-", "+", 1000)
    }
    entries = [
        (commands.decode(fields[DATA_FIELD.encode()]), entry_id in pending)
        for entry_id, fields in await client.xrange(SLOW_CHANNEL)
    ]
    return [(c, is_pending) for c, is_pending in entries if c.run_id == run_id]


async def test_a_worker_stopped_mid_attempt_records_it_abandoned_and_hands_the_next_one_on(
    redis_store: RedisEventStore, redis_url: str, client: aioredis.Redis, workspace: str
) -> None:
    submitter = Submitter(redis_store, SLOW_CATALOG, CommandBus(client))
    first = slow_worker(redis_store, redis_url, "w-stop-first")
    await first.start()
    try:
        run = (await submitter.submit(workspace, SLOW.name, {"n": 1})).run_id
        await started(redis_store, workspace, run)
    finally:
        await first.stop()  # cuts the first attempt off after its drain time

    stream = keys.run_stream(run)
    events = await redis_store.read_stream(workspace, stream)
    assert [e.type for e in events] == ["RunSubmitted", "StageStarted", "StageFailed"]
    start, failed = events[1], events[2]
    assert failed.data["attempt"] == 1 and failed.causation_id == str(start.event_id)
    assert (failed.data["error_type"], failed.data["error"]) == ("AttemptAbandoned", STOPPED)
    assert failed.data["will_retry"] and failed.data["retry_at"] is not None
    # its entry acknowledged in the same step, and the next attempt's command on the channel
    [(_, first_pending), (retry, _)] = await channel_entries(client, run)
    assert not first_pending
    assert (retry.attempt, retry.lost, retry.cause) == (2, 1, str(failed.event_id))
    # the run view (and replay) shows the run waiting for its next attempt
    (shown,) = runs_as_of(events).runs
    assert shown["status"] == "retrying"
    assert shown["stages"][0]["status"] == "retrying" and STOPPED in shown["stages"][0]["error"]

    # another worker, which claims nothing within the test, starts the next attempt at once
    second = slow_worker(redis_store, redis_url, "w-stop-second")
    await second.start()
    try:
        assert await wait_terminal(redis_store, workspace, [run], within=10) == {
            run: "RunCompleted"
        }
    finally:
        await second.stop()
    events = await redis_store.read_stream(workspace, stream)
    failures = {e.data["attempt"]: e for e in events if e.type == "StageFailed"}
    starts = {e.data["attempt"]: e for e in events if e.type == "StageStarted"}
    # each attempt follows from the failure before it (lineage); the stop used up none of
    # the stage's one retry: the second attempt's failure was retried
    assert starts[2].causation_id == str(failures[1].event_id)
    assert starts[3].causation_id == str(failures[2].event_id)
    assert failures[2].data["error_type"] == "StageError" and failures[2].data["will_retry"]
    assert [e.type for e in events][-2:] == ["StageCompleted", "RunCompleted"]


async def test_a_stop_records_nothing_for_an_attempt_whose_run_was_cancelled_meanwhile(
    redis_store: RedisEventStore, redis_url: str, client: aioredis.Redis, workspace: str
) -> None:
    submitter = Submitter(redis_store, SLOW_CATALOG, CommandBus(client))
    worker = slow_worker(redis_store, redis_url, "w-stop-cancelled")
    await worker.start()
    try:
        run = (await submitter.submit(workspace, SLOW.name, {"n": 1})).run_id
        await started(redis_store, workspace, run)
        # cancelled without a stop notice (one lost), which would interrupt the attempt
        # before the stop: the attempt is still running when the worker stops
        stream = keys.run_stream(run)
        await redis_store.append(workspace, stream, [new_event(RunCancelled())], 1)
    finally:
        await worker.stop()
    events = await redis_store.read_stream(workspace, keys.run_stream(run))
    # the abandonment clashed with the cancel: nothing recorded, nothing handed on; the
    # entry stays pending, as before (whoever claims it finds the run ended)
    assert [e.type for e in events] == ["RunSubmitted", "StageStarted", "RunCancelled"]
    [(command, is_pending)] = await channel_entries(client, run)
    assert command.attempt == 1 and is_pending
