"""``Submitter``: a run's ``RunSubmitted`` and its first command, in one append or two steps."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from stageline.actors import commands
from stageline.actors.channels import DATA_FIELD, CommandBus
from stageline.actors.pipeline import Pipeline, PipelineCatalog, StageSpec
from stageline.actors.submit import Submitter
from stageline.errors import InvalidEvent
from stageline.events import keys
from stageline.events.memory_store import MemoryEventStore
from stageline.events.redis_store import RedisEventStore


class CountingBus(CommandBus):
    """A bus that counts its publishes."""

    def __init__(self, client: aioredis.Redis) -> None:
        super().__init__(client)
        self.published: list[Sequence[Any]] = []

    async def publish(self, items: Sequence[Any], **options: Any) -> None:
        self.published.append(items)
        await super().publish(items, **options)


def one_stage() -> tuple[str, PipelineCatalog]:
    actor = f"first-{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline(name=f"p-{actor}", stages=(StageSpec(name="a", actor=actor),))
    return actor, PipelineCatalog([pipeline])


async def channel(broker: aioredis.Redis, actor: str) -> list[commands.StageCommand]:
    entries = await broker.xrange(keys.stage_channel(actor))
    return [commands.decode(fields[DATA_FIELD.encode()]) for _, fields in entries]


async def test_on_the_store_server_the_append_writes_the_first_command(
    redis_store: RedisEventStore, broker: aioredis.Redis, workspace: str
) -> None:
    actor, catalog = one_stage()
    bus = CountingBus(broker)
    submitter = Submitter(redis_store, catalog, bus)
    try:
        run = await submitter.submit(workspace, f"p-{actor}", {"k": 1}, idempotency_key="a")

        assert bus.published == []  # no second step: the append's outbox wrote it
        [command] = await channel(broker, actor)
        assert (command.run_id, command.index, command.version) == (run.run_id, 0, 0)
        assert (command.pipeline_version, command.item, command.workspace) == (
            1,
            {"k": 1},
            workspace,
        )
        [submitted] = await redis_store.read_stream(workspace, run.stream)
        assert command.cause == str(submitted.event_id)
        assert command.correlation_id == submitted.correlation_id

        # a retry of the same submission appends nothing and hands the run on again,
        # as before the outbox, while no stage has started
        again = await submitter.submit(workspace, f"p-{actor}", {"k": 1}, idempotency_key="a")
        assert again.deduplicated and again.run_id == run.run_id
        assert len(bus.published) == 1
        assert [c.run_id for c in await channel(broker, actor)] == [run.run_id] * 2
    finally:
        await broker.delete(keys.stage_channel(actor))


async def test_elsewhere_the_first_command_is_published_after_the_append(
    broker: aioredis.Redis, workspace: str
) -> None:
    actor, catalog = one_stage()
    bus = CountingBus(broker)
    try:
        run = await Submitter(MemoryEventStore(), catalog, bus).submit(workspace, f"p-{actor}", {})

        assert len(bus.published) == 1
        assert [(c.run_id, c.version) for c in await channel(broker, actor)] == [(run.run_id, 0)]
    finally:
        await broker.delete(keys.stage_channel(actor))


async def test_submissions_made_together_each_get_their_own_answer(
    redis_store: RedisEventStore, broker: aioredis.Redis, workspace: str
) -> None:
    actor, catalog = one_stage()
    submitter = Submitter(redis_store, catalog, CountingBus(broker))
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(100_000):  # deeper than msgspec encodes
        inner["a"] = inner = {}
    calls = [submitter.submit(workspace, f"p-{actor}", {"k": i}) for i in range(10)]
    calls.insert(5, submitter.submit(workspace, f"p-{actor}", deep))
    try:
        done = await asyncio.gather(*calls, return_exceptions=True)

        assert isinstance(done[5], InvalidEvent), done[5]  # its own error, and only its
        runs = [r for r in done if not isinstance(r, BaseException)]
        assert len(runs) == 10 and not any(r.deduplicated for r in runs)
        handed = await channel(broker, actor)
        assert sorted(c.run_id for c in handed) == sorted(r.run_id for r in runs)
        assert [c.item["k"] for c in handed] == list(range(10))  # in the order submitted
        log = await redis_store.read_log(workspace)
        assert sorted(e.stream for e in log) == sorted(r.stream for r in runs)  # once each
    finally:
        await broker.delete(keys.stage_channel(actor))
