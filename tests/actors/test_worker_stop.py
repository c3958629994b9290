"""A stopped worker reads nothing more, even when one of its reads missed the cancellation.

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

from stageline.actors.channels import CommandBus
from stageline.actors.pipeline import Pipeline, PipelineCatalog, StageSpec
from stageline.actors.stage import ActorRegistry, StageContext, StageResult
from stageline.actors.submit import Submitter
from stageline.actors.worker import Worker, WorkerConfig
from stageline.events import keys
from stageline.events.redis_store import RedisEventStore, connect

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
