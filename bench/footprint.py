"""Scenario 5, footprint: peak RSS of stageline's processes during the live pipeline, and
Redis memory per stored event.

RSS is the kernel's high-water mark (``VmHWM``) of each process at the end of
its live-pipeline run (scenario 2; when that scenario is not selected, a short
run of it is made here). Memory per event: 5,000 synthetic runs appended to a
fresh workspace, then ``MEMORY USAGE`` (every element counted) of the log and
of every stream's index hash, divided by the events; ``INFO used_memory``
before/after is kept as detail. The bare Lua floor's two streams are measured
the same way.
"""

from __future__ import annotations

import asyncio
import statistics

import redis.asyncio as aioredis

from bench import data, floor, live
from bench.append import RUNS_PER_ROUND_TRIP, _chunks
from bench.context import Context
from bench.figures import Scenario
from bench.live_stageline import MODES
from bench.server import drop_workspace, memory_usage, used_memory
from stageline.events import codec, keys
from stageline.events.redis_store import RedisEventStore, connect

RUNS = 5000


async def _keys_memory(client: aioredis.Redis, names: list[str]) -> int:
    total = 0
    for chunk in _chunks(names, 1000):
        pipe = client.pipeline(transaction=False)
        for name in chunk:
            pipe.execute_command("MEMORY", "USAGE", name, "SAMPLES", "0")
        total += sum(int(v or 0) for v in await pipe.execute())
    return total


async def stageline_per_event(
    store: RedisEventStore, client: aioredis.Redis, ctx: Context, runs: int
) -> dict[str, float]:
    ws = ctx.workspace("memory")
    requests = data.run_requests(ws, runs)
    events = runs * data.EVENTS_PER_RUN
    try:
        await asyncio.sleep(1.1)  # let the AOF buffer of earlier writes drain
        before = await used_memory(client)
        for chunk in _chunks(requests, RUNS_PER_ROUND_TRIP):
            await store.append_batch(chunk)
        await asyncio.sleep(1.1)
        after = await used_memory(client)
        log = await memory_usage(client, keys.log_key(ws))
        index = await _keys_memory(client, [keys.stream_key(ws, r.stream) for r in requests])
        blob = statistics.mean(len(codec.encode(e)) for r in requests[:200] for e in r.events)
    finally:
        await drop_workspace(client, ws)
    return {
        "keys": (log + index) / events,
        "log": log / events,
        "index": index / events,
        "used_memory": (after - before) / events,
        "blob": blob,
    }


async def floor_per_event(client: aioredis.Redis, ctx: Context, runs: int) -> float:
    ws = ctx.workspace("memory-floor")
    calls = floor.calls(data.run_requests(ws, runs))
    bare = floor.Floor(client)
    await bare.load()
    try:
        for chunk in _chunks(calls, RUNS_PER_ROUND_TRIP):
            await bare.pipelined(chunk)
        total = await _keys_memory(client, [calls[0][1], *(c[0] for c in calls)])
    finally:
        await drop_workspace(client, ws, floor.PREFIX)
    return total / (runs * data.EVENTS_PER_RUN)


async def run(ctx: Context) -> Scenario:
    s = Scenario("footprint", "Footprint: process RSS and Redis memory per event")
    runs = ctx.n(RUNS, 20)
    s.params = {"runs": runs, "events": runs * data.EVENTS_PER_RUN}
    if "rss" not in ctx.shared:
        ctx.log("the live scenario did not run: a short live run for the RSS figures")
        scratch = Scenario("live", "scratch")
        for mode in MODES:
            await live._stageline(ctx, scratch, mode, ctx.n(live.RUNS, 20), ctx.seconds(2.0, 1.0))
    rss = ctx.shared["rss"]
    names = {
        ("up", "stageline-up"): "`stageline up` (actors, projector, API in one process)",
        ("split", "stageline-worker"): "`stageline worker`",
        ("split", "stageline-projector"): "`stageline projector`",
        ("faststream", "faststream"): "plain FastStream app (peer)",
    }
    for (mode, child), label in names.items():
        value = rss.get(mode, {}).get(child)
        if value is not None:
            fig = s.figure(label, "peak RSS during the live pipeline", "MB", higher_is_better=False)
            fig.samples.append(value)
    store = RedisEventStore.from_url(ctx.url)
    client = connect(ctx.url)
    per_event = s.figure(
        "stageline store",
        "Redis memory per event (log + stream index)",
        "bytes",
        higher_is_better=False,
    )
    log_part = s.figure(
        "stageline store", "of which the log stream", "bytes", higher_is_better=False
    )
    index_part = s.figure(
        "stageline store", "of which the stream index hashes", "bytes", higher_is_better=False
    )
    used = s.figure(
        "stageline store", "INFO used_memory delta per event", "bytes", higher_is_better=False
    )
    blob = s.figure(
        "stageline store", "encoded event (msgpack blob)", "bytes", higher_is_better=False
    )
    bare = s.figure(
        "bare Lua floor", "Redis memory per event (two streams)", "bytes", higher_is_better=False
    )
    try:
        for _ in range(ctx.repeat):
            m = await stageline_per_event(store, client, ctx, runs)
            per_event.samples.append(m["keys"])
            log_part.samples.append(m["log"])
            index_part.samples.append(m["index"])
            used.samples.append(m["used_memory"])
            blob.samples.append(m["blob"])
            bare.samples.append(await floor_per_event(client, ctx, runs))
            ctx.log(
                f"  Redis memory per event: {m['keys']:.0f} bytes (log {m['log']:.0f}, index "
                f"{m['index']:.0f}; used_memory delta {m['used_memory']:.0f}); floor "
                f"{bare.samples[-1]:.0f}; blob {m['blob']:.0f} bytes"
            )
    finally:
        await store.close()
        await client.aclose()
    live_memory = ctx.shared.get("live_memory_per_event", {})
    for mode, value in live_memory.items():
        fig = s.figure(
            f"stageline ({mode})",
            "INFO used_memory delta per event, live runs (log, index, views, channels)",
            "bytes",
            higher_is_better=False,
        )
        fig.samples.append(value)
    s.ratio("Redis memory per event: stageline / bare Lua floor", per_event, bare)
    return s
