"""Scenario 2, the live pipeline: 5 no-op stages, runs submitted until the view shows them.

For each system: warm-up, then ``repeat`` throughput rounds (N runs submitted
64 at a time, timed until the last is visible as completed: runs/s and
events/s), then ``repeat`` latency rounds at a fixed offered load of half
the median throughput (submit-to-visible p50/p99; the p99 of one round swings
by 2x on these shared machines, so the figure is the median round's). Systems run one after the
other, each in fresh processes (a process's lifetime is part of what is
measured: peak RSS for the footprint scenario).
"""

from __future__ import annotations

import statistics
from typing import Any

from bench import data
from bench.context import Context
from bench.figures import Figure, Scenario
from bench.live_peers import FastStreamLive, eventsourcing_live
from bench.live_stageline import MODES, StagelineLive

RUNS = 5000
FASTSTREAM_RUNS = 1000
ES_RUNS = 300
LATENCY_SECONDS = 10.0


def _latency_figures(s: Scenario, system: str, lat: dict[str, Any]) -> tuple[Figure, Figure]:
    """Add one latency round's p50 and p99 (and its details) to the system's figures."""
    p50 = s.figure(system, "p50 submit-to-visible at half load", "ms", higher_is_better=False)
    p99 = s.figure(system, "p99 submit-to-visible at half load", "ms", higher_is_better=False)
    p50.samples.append(lat["p50"])
    p99.samples.append(lat["p99"])
    for key, value in lat.items():
        p50.detail.setdefault(key, []).append(round(value, 2))
    p99.detail = p50.detail
    return p50, p99


async def _stageline(ctx: Context, s: Scenario, mode: str, runs: int, seconds: float) -> None:
    system = f"stageline ({mode})"
    live = StagelineLive(ctx, mode)
    ctx.log(f"starting {MODES[mode]}")
    live.start()
    try:
        rps = s.figure(system, "runs/s", "runs/s")
        eps = s.figure(system, "events/s (persisted and projected)", "events/s")
        memory = []
        for _ in range(ctx.warmup):
            t = await live.throughput(max(10, runs // 5))
            ctx.log(f"  warm-up {system}: {t.runs_per_s:,.0f} runs/s")
        for _ in range(ctx.repeat):
            t = await live.throughput(runs)
            rps.samples.append(t.runs_per_s)
            eps.samples.append(t.events_per_s)
            memory.append(t.memory_per_event)
            for key, value in (
                ("cpu_ms_per_run", t.cpu_ms_per_run),
                ("redis_commands_per_run", t.commands_per_run),
                ("redis_server_us_per_run", t.server_us_per_run),
            ):
                rps.detail.setdefault(key, []).append(value)
            ctx.log(
                f"  {system}: {t.runs_per_s:,.0f} runs/s, {t.events_per_s:,.0f} events/s "
                f"(submitting took {t.submit_seconds:.2f}s of {t.seconds:.2f}s)"
            )
        rate = 0.5 * rps.median
        for _ in range(ctx.repeat):
            lat = await live.latency(rate, seconds)
            ctx.log(
                f"  {system} at {rate:,.0f} runs/s: p50 {lat['p50']:.1f} ms, p99"
                f" {lat['p99']:.1f} ms (submit to RunCompleted appended: p50"
                f" {lat['to_appended_p50']:.1f}, p99 {lat['to_appended_p99']:.1f}; appended to"
                f" visible: p50 {lat['appended_to_visible_p50']:.1f}, p99"
                f" {lat['appended_to_visible_p99']:.1f}); AOF rewrites: {lat['aof_rewrites']}"
            )
            _latency_figures(s, system, lat)
        ctx.shared.setdefault("live_memory_per_event", {})[mode] = statistics.median(memory)
    finally:
        peaks = live.stop()
        await live.close()
    ctx.shared.setdefault("rss", {})[mode] = peaks
    ctx.log(f"  peak RSS: {', '.join(f'{k} {v:.0f} MB' for k, v in peaks.items())}")


async def _faststream(ctx: Context, s: Scenario, runs: int, seconds: float) -> None:
    system = "FastStream (plain, no persistence)"
    live = FastStreamLive(ctx)
    ctx.log("starting the plain FastStream pipeline")
    await live.start()
    try:
        rps = s.figure(system, "runs/s", "runs/s")
        mps = s.figure(system, "messages/s (handler calls)", "msg/s")
        for _ in range(ctx.warmup):
            await live.throughput(max(10, runs // 5))
        for _ in range(ctx.repeat):
            value = await live.throughput(runs)
            rps.samples.append(value)
            mps.samples.append(value * len(data.STAGES))
            ctx.log(f"  {system}: {value:,.0f} runs/s")
        for _ in range(ctx.repeat):
            lat = await live.latency(0.5 * rps.median, seconds)
            ctx.log(f"  {system}: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms")
            _latency_figures(s, system, lat)
    finally:
        ctx.shared.setdefault("rss", {})["faststream"] = {"faststream": await live.stop()}


async def _eventsourcing(ctx: Context, s: Scenario, runs: int, seconds: float) -> None:
    system = "eventsourcing (SQLite system)"
    ctx.log("running the eventsourcing system (its own process)")
    result = await eventsourcing_live(ctx, runs, seconds)
    rps = s.figure(system, "runs/s", "runs/s")
    eps = s.figure(system, "events/s (persisted and projected)", "events/s")
    rps.samples.extend(result["runs_per_s"])
    eps.samples.extend(v * data.EVENTS_PER_RUN for v in result["runs_per_s"])
    ctx.log(f"  {system}: {', '.join(f'{v:,.0f}' for v in rps.samples)} runs/s")
    _latency_figures(s, system, result["latency"])


async def run(ctx: Context) -> Scenario:
    s = Scenario("live", "Live 5-stage no-op pipeline, submit until visible in the run-status view")
    runs, fs_runs, es_runs = ctx.n(RUNS, 20), ctx.n(FASTSTREAM_RUNS, 20), ctx.n(ES_RUNS, 10)
    seconds = ctx.seconds(LATENCY_SECONDS, 1.0)
    s.params = {
        "stageline_runs": runs,
        "faststream_runs": fs_runs,
        "eventsourcing_runs": es_runs,
        "events_per_run": data.EVENTS_PER_RUN,
        "submit_concurrency": 64,
        "latency_seconds": seconds,
    }
    for mode in MODES:
        await _stageline(ctx, s, mode, runs, seconds)
    await _faststream(ctx, s, fs_runs, seconds)
    await _eventsourcing(ctx, s, es_runs, seconds)
    for mode in MODES:
        sl = f"stageline ({mode})"
        for peer in ("FastStream (plain, no persistence)", "eventsourcing (SQLite system)"):
            for metric in ("runs/s", "p99 submit-to-visible at half load"):
                num, den = s.figures.get(f"{sl}: {metric}"), s.figures.get(f"{peer}: {metric}")
                if num is not None and den is not None:
                    s.ratio(f"{metric}: {sl} / {peer}", num, den)
    s.notes.append(
        "Each system runs N runs per round (N differs: stageline "
        f"{runs}, FastStream {fs_runs}, eventsourcing {es_runs}, so each round lasts seconds); "
        "the rates are steady-state. stageline runs are submitted by the bench process through "
        "`Submitter` (the code behind POST /v1/runs) and visible when the run_status "
        "checkpoint passes their RunCompleted; FastStream runs are done when the last stage's "
        "handler ran (it has no view); eventsourcing runs when its Status application recorded "
        "them finished. Latency rounds: as many as throughput rounds for stageline and FastStream "
        "(eventsourcing's process runs one), at half the system's median runs/s."
    )
    return s
