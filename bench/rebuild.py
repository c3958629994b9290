"""Scenario 3, projection rebuild: 1,000,000 events of synthetic runs into the run-status view.

stageline: a log is written once (pipelined ``append_batch``), then
``Projector.rebuild(workspace, "run_status")`` drops the view and replays the
log into FalkorDB from position 0, once per repetition, its batches folded by a
``FoldPool`` of ``STAGELINE_REBUILD_WORKERS`` processes as ``stageline projections
rebuild`` folds them. Two logs of the same
runs: one with each run's 12 events one after another, and one shaped like
the log the live pipeline writes, where the events of a few hundred runs in
flight interleave (``data.interleaved_batches``). The second is what a real
log looks like, and it costs FalkorDB several times more per run: a batch
then holds a few events of many runs instead of whole runs, so each run is
written by several batches (MATCH/MERGE instead of one CREATE). It is
measured once per invocation (a round takes over a minute at full size; with
``--repeat 6`` twice). eventsourcing: the
same runs saved once into an in-memory (POPO) application, then a
``ProjectionRunner`` folds them from the start into an in-memory run-status
view (``es_model.RunStatusView``), a fresh view per repetition (SQLite
recorders offer no subscription, so the library's projection runner cannot
follow an SQLite application). Warm-ups use a small separate log.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import data
from bench.context import Context
from bench.figures import Scenario, repeat_round_robin
from bench.procs import bench_env, run_module
from bench.server import drop_workspace
from stageline.events.redis_store import RedisEventStore, connect
from stageline.projections.falkordb_views import FalkorDBViews
from stageline.projections.fold_pool import FoldPool
from stageline.projections.projector import REBUILD_BATCH, Projector
from stageline.settings import Settings

EVENTS = 1_000_000
RUNS_PER_ROUND_TRIP = 200
UNIT = "events/s"
PROJECTION = "run_status"
REPO = Path(__file__).resolve().parent.parent


async def write_log(store: RedisEventStore, ws: str, runs: int) -> float:
    """Append ``runs`` synthetic runs to ``ws``, pipelined; events/s."""
    started = time.perf_counter()
    for start in range(0, runs, RUNS_PER_ROUND_TRIP):
        chunk = data.run_requests(ws, min(RUNS_PER_ROUND_TRIP, runs - start), start=start)
        results = await store.append_batch(chunk)
        if any(isinstance(r, Exception) for r in results):
            raise RuntimeError(f"append failed: {results}")
    return runs * data.EVENTS_PER_RUN / (time.perf_counter() - started)


async def es_process(runs: int, warm_runs: int, ctx: Context) -> dict[str, Any]:
    params = {"runs": runs, "warm_runs": warm_runs, "warmup": ctx.warmup, "repeat": ctx.repeat}
    return await run_module(
        "bench.es_rebuild", params, bench_env(ctx.url, {"PYTHONPATH": str(REPO)})
    )


async def run(ctx: Context) -> Scenario:
    s = Scenario("rebuild", "Projection rebuild from position 0 into the run-status view")
    runs = max(1, ctx.n(EVENTS, 120) // data.EVENTS_PER_RUN)
    warm_runs = max(1, runs // 50)
    store = RedisEventStore.from_url(ctx.url)
    client = connect(ctx.url)
    views = FalkorDBViews.from_url(ctx.url)
    workers = Settings().rebuild_workers  # as `stageline projections rebuild` takes it
    projector = Projector(store, views, fold_pool=FoldPool(ctx.url, workers) if workers else None)
    s.params = {
        "runs": runs,
        "events": runs * data.EVENTS_PER_RUN,
        "rebuild_batch": max(projector.batch_size, REBUILD_BATCH),
        "rebuild_workers": workers,
        "warmup_events": warm_runs * data.EVENTS_PER_RUN,
    }
    ws, warm_ws = ctx.workspace("rebuild"), ctx.workspace("rebuild-warm")
    live_ws = ctx.workspace("rebuild-live")
    live_rounds = max(1, ctx.repeat // 3)
    s.params["live_shaped_rounds"] = live_rounds
    sl = s.figure("stageline", "Projector.rebuild, runs one after another", UNIT)
    sl_live = s.figure("stageline", "Projector.rebuild, log shaped like a live one", UNIT)
    es = s.figure("eventsourcing", "ProjectionRunner, POPO log into in-memory view", UNIT)

    async def rebuild(target: str) -> float:
        started = time.perf_counter()
        result = await projector.rebuild(target, PROJECTION)
        return result.events / (time.perf_counter() - started)

    async def check(target: str) -> None:
        stats = await views.stats(target)
        if stats["counts"]["completed"] != runs:
            raise RuntimeError(f"stageline view shows {stats['counts']} for {runs} runs")

    try:
        ctx.log(f"writing {runs * data.EVENTS_PER_RUN:,} events to stageline's log")
        rate = await write_log(store, ws, runs)
        await write_log(store, warm_ws, warm_runs)
        s.params["stageline_log_write_events_per_s"] = round(rate)
        ctx.log(f"  written at {rate:,.0f} events/s")
        rounds = 0

        async def stageline() -> dict[str, float]:
            nonlocal rounds
            rounds += 1
            real = rounds > ctx.warmup
            value = await rebuild(ws if real else warm_ws)
            return {sl.key: value} if real else {}

        await repeat_round_robin(
            s, [(stageline, [sl])], repeat=ctx.repeat, warmup=ctx.warmup, log=ctx.log
        )
        await check(ws)
        await drop_workspace(client, ws)
        ctx.log("writing the same number of runs, interleaved as a live pipeline writes them")
        started = time.perf_counter()
        for batch in data.interleaved_batches(live_ws, runs):
            results = await store.append_batch(batch)
            if any(isinstance(r, Exception) for r in results):
                raise RuntimeError(f"append failed: {results[:3]}")
        written = runs * data.EVENTS_PER_RUN / (time.perf_counter() - started)
        ctx.log(f"  written at {written:,.0f} events/s (one event or two per append)")
        for _ in range(live_rounds):
            sl_live.samples.append(await rebuild(live_ws))
            ctx.log(f"  {sl_live.key}: {sl_live.samples[-1]:,.0f} events/s")
        await check(live_ws)
    finally:
        for name in (ws, warm_ws, live_ws):
            await drop_workspace(client, name)
        await views.close()
        await store.close()
        await client.aclose()
    ctx.log("eventsourcing: writing its log and rebuilding (its own process)")
    result = await es_process(runs, warm_runs, ctx)
    s.params["eventsourcing_log_write_events_per_s"] = round(result["write_events_per_s"])
    es.samples.extend(result["events_per_s"])
    ctx.log(f"  {es.key}: {', '.join(f'{v:,.0f}' for v in es.samples)} events/s")
    s.ratio("live-shaped log: stageline / eventsourcing projection runner", sl_live, es)
    s.ratio("runs one after another: stageline / eventsourcing projection runner", sl, es)
    s.notes.append(
        "stageline's figure includes dropping the old view; the log is read from Redis and "
        "the view written to FalkorDB (one server, two cores shared with the bench process and "
        "the rebuild's fold processes). "
        "eventsourcing's log and view are both Python objects, in a process of their own "
        "(es_rebuild.py says why). eventsourcing folds each event into a dict whatever the "
        "order, so its log is written run by run."
    )
    return s
