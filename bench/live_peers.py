"""The peers' side of the live pipeline: plain FastStream, and eventsourcing's system on SQLite."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from faststream.redis import RedisBroker

from bench import faststream_app as fs
from bench.context import Context
from bench.data import TEXT
from bench.live_stageline import CONCURRENCY, REPO
from bench.procs import Child, bench_env, run_module
from bench.stats import percentiles
from stageline.events.redis_store import connect


class FastStreamLive:
    """Drives ``faststream_app`` (its own process) from the bench process."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.child: Child | None = None
        self.client: aioredis.Redis = connect(ctx.url)
        self.broker = RedisBroker(ctx.url)

    async def start(self) -> None:
        env = bench_env(self.ctx.url, {"PYTHONPATH": str(REPO)})
        argv = ["-m", "bench.faststream_app", self.ctx.url]
        self.child = Child("faststream", argv, env, self.ctx.logdir())
        await asyncio.to_thread(self.child.wait_for_line, fs.READY)
        await self.broker.connect()

    async def stop(self) -> float:
        """Stop the app and drop its streams; its peak RSS (MB)."""
        peak = float("nan")
        if self.child is not None:
            peak = self.child.peak_rss_mb()
            self.child.stop()
        await self.broker.stop()
        await self.client.delete(fs.DONE, *(fs.channel(i) for i in range(1, fs.STAGES + 1)))
        await self.client.aclose()
        return peak

    async def _publish(self, i: int) -> str:
        run_id = f"{uuid.uuid4()}"
        item = fs.Item(run_id=run_id, t0=time.monotonic(), text=TEXT, stage=0)
        await self.broker.publish(item, stream=fs.channel(1))
        return run_id

    async def _collect(
        self, ids: set[str], start: bytes, timeout: float
    ) -> dict[str, tuple[float, float]]:
        """(t0, t1) of each run in ``ids`` once the last stage has seen it."""
        out: dict[str, tuple[float, float]] = {}
        last = start
        deadline = time.monotonic() + timeout
        while len(out) < len(ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"FastStream: {len(ids) - len(out)} runs not done")
            reply: Any = await self.client.xread({fs.DONE: last}, count=5000, block=100)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    run = fields[b"run"].decode()
                    out[run] = (float(fields[b"t0"]), float(fields[b"t1"]))
        return {r: out[r] for r in ids if r in out}

    async def _last_id(self) -> bytes:
        newest: Any = await self.client.xrevrange(fs.DONE, count=1)
        return newest[0][0] if newest else b"0-0"

    async def throughput(self, runs: int, timeout: float = 600) -> float:
        """Runs/s: ``runs`` published 64 at a time, until the last stage saw them all."""
        start = await self._last_id()
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> str:
            async with limit:
                return await self._publish(i)

        t0 = time.monotonic()
        ids = set(await asyncio.gather(*(one(i) for i in range(runs))))
        done = await self._collect(ids, start, timeout)
        return runs / (max(t1 for _, t1 in done.values()) - t0)

    async def latency(self, rate: float, seconds: float, timeout: float = 600) -> dict[str, float]:
        start = await self._last_id()
        count = max(10, round(rate * seconds))
        t0 = time.monotonic()
        tasks = []
        for i in range(count):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._publish(i)))
        ids = set(await asyncio.gather(*tasks))
        offered = count / (time.monotonic() - t0)
        done = await self._collect(ids, start, timeout)
        lat = percentiles([(t1 - s) * 1000 for s, t1 in done.values()])
        return {"rate": rate, "offered": offered, **lat}


async def eventsourcing_live(ctx: Context, runs: int, latency_seconds: float) -> dict[str, Any]:
    """Run ``es_live`` in its own process; its results."""
    params = {
        "root": str(ctx.root),
        "runs": runs,
        "warmup": ctx.warmup,
        "repeat": ctx.repeat,
        "latency_seconds": latency_seconds,
    }
    env = bench_env(ctx.url, {"PYTHONPATH": str(REPO)})
    return await run_module("bench.es_live", params, env, cwd=REPO)
