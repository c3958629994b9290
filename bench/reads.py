"""Scenario 4, reads: ``GET /v1/runs/{id}`` and ``GET /v1/runs/stats`` under load.

The view holds 10,000 completed runs (synthetic, projected with
``Projector.catch_up``). ``stageline api`` serves them from its own process
(uvicorn, one process); the load comes from a second process
(``loadgen.py``, asyncio, a minimal keep-alive HTTP/1.1 client: httpx could not
offer 500 req/s on these cores, see its docstring): a fixed offered rate of
500 req/s, then as fast as 8 concurrent requests go. The CPU the API process
and the server used meanwhile is kept as detail. Beside it, the same reads straight from FalkorDB
(``FalkorDBViews``, no HTTP, one at a time in the bench process) give the floor.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench import data
from bench.context import Context
from bench.figures import Scenario
from bench.live_stageline import REPO, free_port
from bench.procs import READY, Child, bench_env, cpu_seconds, run_module
from bench.rebuild import write_log
from bench.server import drop_workspace
from bench.stats import percentiles
from stageline.events.redis_store import RedisEventStore, connect
from stageline.projections.falkordb_views import FalkorDBViews
from stageline.projections.projector import Projector

RUNS = 10_000
RATE = 500.0
SECONDS = 10.0
CONCURRENCY = 8
DIRECT_SAMPLES = 2000
API = "stageline API (uvicorn, one process)"
DIRECT = "FalkorDB direct (no HTTP, sequential)"


async def loadgen(params: dict[str, Any], pids: dict[str, int]) -> dict[str, Any]:
    env = bench_env("", {"PYTHONPATH": str(REPO)})
    before, started = cpu_seconds(pids), time.perf_counter()
    result = await run_module("bench.loadgen", params, env)
    elapsed = time.perf_counter() - started  # includes the load generator's start-up
    after = cpu_seconds(pids)
    result["cpu_percent_of"] = {k: round(100 * (after[k] - before[k]) / elapsed) for k in pids}
    return result


async def server_pid(client: Any) -> dict[str, int]:
    info: Any = await client.info("server")
    return {"redis-server": int(info["process_id"])}


async def direct(views: FalkorDBViews, ws: str, run_ids: list[str], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, call in (
        ("run", lambda i: views.get_run(ws, run_ids[i % len(run_ids)])),
        ("stats", lambda i: views.stats(ws)),
    ):
        samples = []
        for i in range(n if name == "run" else max(10, n // 10)):
            started = time.perf_counter()
            await call(i)
            samples.append((time.perf_counter() - started) * 1000)
        out[name] = percentiles(samples)
    return out


async def run(ctx: Context) -> Scenario:
    s = Scenario("reads", "Reads under concurrent load from a second process")
    runs = ctx.n(RUNS, 50)
    seconds = ctx.seconds(SECONDS, 1.0)
    s.params = {
        "runs_in_view": runs,
        "offered_rate": RATE,
        "seconds": seconds,
        "max_concurrency": CONCURRENCY,
    }
    store = RedisEventStore.from_url(ctx.url)
    client = connect(ctx.url)
    views = FalkorDBViews.from_url(ctx.url)
    ws = ctx.workspace("reads")
    api: Child | None = None
    try:
        ctx.log(f"writing and projecting {runs:,} runs")
        await write_log(store, ws, runs)
        await Projector(store, views).catch_up(ws)
        tail = await store.read_log(ws, after=0, limit=data.EVENTS_PER_RUN * min(runs, 2000))
        run_ids = sorted({e.stream.removeprefix("run-") for e in tail})
        random.Random(5).shuffle(run_ids)
        port = free_port()
        argv = ["-m", "stageline", "api", "--host", "127.0.0.1", "--port", str(port)]
        api = Child("stageline-api", argv, bench_env(ctx.url), ctx.logdir())
        await asyncio.to_thread(api.wait_for_line, READY)
        pids = {"api": api.pid, **await server_pid(client)}
        base = {"url": f"http://127.0.0.1:{port}", "workspace": ws, "seconds": seconds}
        endpoints = {
            "GET /v1/runs/{id}": [f"/v1/runs/{r}" for r in run_ids],
            "GET /v1/runs/stats": ["/v1/runs/stats"],
        }
        for label, paths in endpoints.items():
            fixed = {**base, "paths": paths, "rate": RATE}
            most = {**base, "paths": paths, "concurrency": CONCURRENCY}
            figs = {
                "p50": s.figure(API, f"{label}: p50 at {RATE:.0f} req/s", "ms", higher_is_better=False),
                "p99": s.figure(API, f"{label}: p99 at {RATE:.0f} req/s", "ms", higher_is_better=False),
                "rps": s.figure(API, f"{label}: req/s achieved at {RATE:.0f} offered", "req/s"),
                "max": s.figure(API, f"{label}: max req/s ({CONCURRENCY} concurrent)", "req/s"),
                "max_p99": s.figure(API, f"{label}: p99 at max", "ms", higher_is_better=False),
            }  # fmt: skip
            for round_ in range(ctx.warmup + ctx.repeat):
                warm = round_ < ctx.warmup
                a = await loadgen({**fixed, "seconds": min(2.0, seconds)} if warm else fixed, pids)
                b = await loadgen({**most, "seconds": min(2.0, seconds)} if warm else most, pids)
                if a["errors"] or b["errors"]:
                    raise RuntimeError(f"{label}: errors {a['error_codes']} {b['error_codes']}")
                ctx.log(
                    f"  {'warm-up ' if warm else ''}{label}: at {RATE:.0f} req/s p50 "
                    f"{a['p50']:.2f} ms p99 {a['p99']:.2f} ms ({a['rps']:.0f} req/s, "
                    f"{a['unfinished']} unanswered after the 5 s drain, loadgen "
                    f"CPU {a['cpu_percent']:.0f}%); max {b['rps']:.0f} req/s p99 {b['p99']:.1f} ms "
                    f"(loadgen CPU {b['cpu_percent']:.0f}%, {b['cpu_percent_of']})"
                )
                if warm:
                    continue
                figs["p50"].samples.append(a["p50"])
                figs["p99"].samples.append(a["p99"])
                figs["rps"].samples.append(a["rps"])
                figs["max"].samples.append(b["rps"])
                figs["max_p99"].samples.append(b["p99"])
                detail = figs["p99"].detail
                detail.setdefault("unanswered_after_5s_drain", []).append(a["unfinished"])
                for fig, r in ((figs["p99"], a), (figs["max"], b)):
                    fig.detail.setdefault("loadgen_cpu_percent", []).append(round(r["cpu_percent"]))
                    fig.detail.setdefault("cpu_percent_during", []).append(r["cpu_percent_of"])
        for _ in range(ctx.repeat):
            d = await direct(views, ws, run_ids, ctx.n(DIRECT_SAMPLES, 50))
            for name, label in (("run", "get_run"), ("stats", "stats")):
                for q in ("p50", "p99"):
                    fig = s.figure(DIRECT, f"{label}: {q}", "ms", higher_is_better=False)
                    fig.samples.append(d[name][q])
        for label, direct_label in (
            ("GET /v1/runs/{id}", "get_run"),
            ("GET /v1/runs/stats", "stats"),
        ):
            s.ratio(
                f"{label} p99 at {RATE:.0f} req/s over HTTP / {direct_label} p99 direct",
                s.figures[f"{API}: {label}: p99 at {RATE:.0f} req/s"],
                s.figures[f"{DIRECT}: {direct_label}: p99"],
            )
    finally:
        if api is not None:
            api.stop()
        await drop_workspace(client, ws)
        await views.close()
        await store.close()
        await client.aclose()
    s.notes.append(
        "Latencies are measured by the load generator from sending each request to its "
        "response; the load generator, the API process and the server share the 2 cores, so "
        "`max req/s` may be limited by the load generator (its CPU use, and the API's and "
        "the server's, are in results.json). When an endpoint cannot keep up with 500 req/s, "
        "the round stops waiting 5 s after the last send and the requests still unanswered "
        "count with the time they had waited: its p99 is then a lower bound."
    )
    return s
