"""A worker process: one FastStream subscriber and one claimer per actor, plus the scheduler."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio as aioredis
import structlog
from faststream.redis import RedisBroker, StreamSub

from stageline.actors import commands
from stageline.actors.channels import DATA_FIELD, CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.decide import ABANDON_GRACE_SECONDS
from stageline.actors.pipeline import PipelineCatalog
from stageline.actors.runtime import StageRuntime
from stageline.actors.schedule import Scheduler
from stageline.actors.stage import ActorRegistry
from stageline.events import keys
from stageline.events.store import EventStore
from stageline.logs import get_logger

log = structlog.get_logger(__name__)
_DATA = DATA_FIELD.encode()


@dataclass(frozen=True)
class _Unreadable:
    raw: bytes
    error: str


async def _parse(message: Mapping[str, Any], original: Any) -> Any:
    # FastStream's batch parser JSON-decodes every entry; ours are msgpack, decoded below
    msg = await original({**message, "data": []})
    msg.raw_message = message
    return msg


async def _decode(msg: Any, original: Any) -> list[StageCommand | _Unreadable]:
    out: list[StageCommand | _Unreadable] = []
    for entry in msg.raw_message["data"]:
        raw = entry.get(_DATA, b"")
        try:
            out.append(commands.decode(raw))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            out.append(_Unreadable(raw, f"undecodable command: {exc}"))
    return out


@dataclass(frozen=True)
class WorkerConfig:
    batch_size: int = 200
    claim_idle_ms: int = 30_000
    poll_ms: int = 100
    channel_maxlen: int = 10_000
    abandon_grace_seconds: float = ABANDON_GRACE_SECONDS
    consumer: str = f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """Consumes every registered actor's channel in this process until stopped.

    Several workers share each actor's consumer group; a claimer beside each
    subscriber takes over entries a dead or stopped worker left pending.
    """

    def __init__(
        self,
        store: EventStore,
        broker_url: str,
        catalog: PipelineCatalog,
        actors: ActorRegistry,
        config: WorkerConfig | None = None,
    ) -> None:
        self.config = config or WorkerConfig()
        self.actors = actors
        self.client = aioredis.Redis.from_url(broker_url, decode_responses=False)
        self.bus = CommandBus(self.client, maxlen=self.config.channel_maxlen)
        self.scheduler = Scheduler(self.client, channel_maxlen=self.config.channel_maxlen)
        self.runtime = StageRuntime(
            store,
            catalog,
            actors,
            self.bus,
            self.scheduler,
            abandon_grace=self.config.abandon_grace_seconds,
        )
        # FastStream logs every message at log_level and its task bookkeeping at INFO:
        # keep its lines to warnings and errors
        logging.getLogger("stageline.broker").setLevel(logging.WARNING)
        self.broker = RedisBroker(
            broker_url, logger=get_logger("stageline.broker"), log_level=logging.DEBUG
        )
        self._stop = asyncio.Event()
        self._scheduler_task: asyncio.Task[None] | None = None
        for actor in sorted(actors.names()):
            self._subscribe(actor)

    def _subscribe(self, actor: str) -> None:
        cfg = self.config
        channel, group = keys.stage_channel(actor), keys.stage_group(actor)
        for claim in (None, cfg.claim_idle_ms):
            sub = StreamSub(
                channel,
                group=group,
                consumer=cfg.consumer,
                batch=True,
                max_records=cfg.batch_size,
                polling_interval=cfg.poll_ms,
                min_idle_time=claim,
            )
            self.broker.subscriber(stream=sub, parser=_parse, decoder=_decode)(self._handler(actor))

    def _handler(self, actor: str) -> Any:
        async def handle(batch: Any) -> None:
            good = [c for c in batch if isinstance(c, StageCommand)]
            for bad in batch:
                if isinstance(bad, _Unreadable):
                    log.error("worker.unreadable_command", actor=actor, error=bad.error)
                    await self.bus.dead_letter(actor, bad.raw, bad.error)
            if good:
                await self.runtime.handle(actor, good)

        handle.__name__ = f"stage_{actor}"
        return handle

    async def start(self) -> None:
        await self.bus.ensure_groups(self.actors.names())
        await self.broker.start()
        self._stop.clear()
        self._scheduler_task = asyncio.create_task(self.scheduler.run(self._stop))
        log.info(
            "worker.started", consumer=self.config.consumer, actors=sorted(self.actors.names())
        )

    async def stop(self) -> None:
        self._stop.set()
        await self.broker.stop()
        if self._scheduler_task is not None:
            await self._scheduler_task
        await self.client.aclose()
        log.info("worker.stopped", consumer=self.config.consumer)
