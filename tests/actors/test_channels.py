"""The hand-off: commands onto their channels and the batch's acknowledgement, in one step."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from stageline.actors import commands
from stageline.actors.channels import CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.schedule import scheduled_entry
from stageline.events import keys


@pytest.fixture
async def actors(broker: aioredis.Redis) -> AsyncIterator[list[str]]:
    """Three actors of this test only; their channels are deleted afterwards."""
    names = [f"hand-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    yield names
    await broker.delete(*(keys.stage_channel(a) for a in names))


def command(index: int) -> StageCommand:
    return StageCommand(
        workspace="ws", run_id="r1", pipeline="p", pipeline_version=1, index=index, version=index,
        item={"n": index},
    )  # fmt: skip


async def pending_entry(broker: aioredis.Redis, bus: CommandBus, actor: str) -> bytes:
    """Put a command on ``actor``'s channel and read it: it is pending until acknowledged."""
    await bus.ensure_groups([actor])
    await bus.publish([(actor, command(0))])
    [[_, [(entry_id, _)]]] = await broker.xreadgroup(
        keys.stage_group(actor), "c1", {keys.stage_channel(actor): ">"}
    )
    return bytes(entry_id)


async def pending(broker: aioredis.Redis, actor: str) -> int:
    info = await broker.xpending(keys.stage_channel(actor), keys.stage_group(actor))
    return int(info["pending"])


async def test_hand_off_writes_commands_and_delays_then_acknowledges_in_one_call(
    broker: aioredis.Redis, actors: list[str]
) -> None:
    first, second, _ = actors
    bus = CommandBus(broker)
    entry = await pending_entry(broker, bus, first)
    due = time.time() + 3600  # far off: no scheduler of another test moves it meanwhile
    later = (due, keys.stage_channel(first), commands.encode(command(0)))
    try:
        await bus.publish([(second, command(1))] * 2, scheduled=[later], ack=(first, [entry]))
        written = await broker.xrange(keys.stage_channel(second))
        assert [commands.decode(f[b"__data__"]).index for _, f in written] == [1, 1]
        member = scheduled_entry(keys.stage_channel(first), commands.encode(command(0)))
        assert await broker.zscore(keys.SCHEDULED, member) == pytest.approx(due)
        assert await pending(broker, first) == 0
    finally:
        await broker.zrem(keys.SCHEDULED, scheduled_entry(*later[1:]))


async def test_entries_stay_pending_when_a_command_they_hand_on_cannot_be_written(
    broker: aioredis.Redis, actors: list[str]
) -> None:
    first, second, broken = actors
    bus = CommandBus(broker)
    entry = await pending_entry(broker, bus, first)
    await broker.set(keys.stage_channel(broken), b"not a stream")  # every XADD to it fails
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await bus.publish([(second, command(1)), (broken, command(2))], ack=(first, [entry]))
    assert await pending(broker, first) == 1  # never acknowledged: a claimer hands it on later
    await broker.delete(keys.stage_channel(broken))
    await bus.publish([(broken, command(2))], ack=(first, [entry]))
    assert await pending(broker, first) == 0


async def test_idle_consumers_with_nothing_pending_are_forgotten_others_kept(
    broker: aioredis.Redis, actors: list[str]
) -> None:
    actor = actors[0]
    channel, group = keys.stage_channel(actor), keys.stage_group(actor)
    bus = CommandBus(broker)
    await pending_entry(broker, bus, actor)  # pending under "c1"
    await broker.xgroup_createconsumer(channel, group, "killed")
    await asyncio.sleep(0.3)
    await broker.xreadgroup(group, "live", {channel: ">"})  # reads nothing, but reads

    assert await bus.forget_idle_consumers(channel, group, 200) == 1
    consumers = await broker.xinfo_consumers(channel, group)
    assert sorted(c["name"] for c in consumers) == [b"c1", b"live"]
    assert await pending(broker, actor) == 1
    assert await bus.forget_idle_consumers(channel, group, 200) == 0
