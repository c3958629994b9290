"""The plain FastStream peer: the same 5 no-op stages, one handler call per message, no
persistence, written the way FastStream's docs show it (a pydantic message, a consumer
group per stage, ``@subscriber`` + ``@publisher``).

Run as ``python -m bench.faststream_app <redis url>``; prints ``bench.faststream.ready``
once subscribed, stops on SIGTERM. The last stage writes ``(run, t0, t1)`` to
``bench-fs:done`` (``time.monotonic()`` is one clock for every process on Linux).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from faststream.redis import RedisBroker, StreamSub
from pydantic import BaseModel

STAGES = 5
GROUP = "bench-fs"
DONE = "bench-fs:done"
READY = "bench.faststream.ready"


def channel(i: int) -> str:
    return f"bench-fs:stage-{i}"


class Item(BaseModel):
    run_id: str
    t0: float
    text: str
    stage: int = 0


def build(url: str) -> tuple[RedisBroker, aioredis.Redis]:
    broker = RedisBroker(url)
    sink = aioredis.Redis.from_url(url)

    def stage(i: int) -> None:
        sub = StreamSub(channel(i), group=GROUP, consumer="c1")
        if i < STAGES:

            async def handle(item: Item) -> Item:
                return item.model_copy(update={"stage": i})

            handle.__name__ = f"stage_{i}"
            broker.subscriber(stream=sub)(broker.publisher(stream=channel(i + 1))(handle))
        else:

            async def last(item: Item) -> None:
                fields: Any = {"run": item.run_id, "t0": item.t0, "t1": time.monotonic()}
                await sink.xadd(DONE, fields)

            last.__name__ = f"stage_{i}"
            broker.subscriber(stream=sub)(last)

    for i in range(1, STAGES + 1):
        stage(i)
    return broker, sink


async def main(url: str) -> None:
    broker, sink = build(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    print(READY, flush=True)
    try:
        await stop.wait()
    finally:
        await broker.stop()
        await sink.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
