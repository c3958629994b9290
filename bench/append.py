"""Scenario 1, durable append: 5,000 runs x 12 events.

stageline's Redis store (Lua append: optimistic concurrency + idempotency)
appending a whole run per call and one event per call, each sequentially (one
round trip per call) and pipelined (many calls per round trip through
``append_batch``); the bare Lua floor (``floor.py``) in the same four shapes;
the ``eventsourcing`` library saving one run per call with its SQLite store and
its in-memory (POPO) store. The events are built before timing for everyone
(stageline's ``NewEvent`` lists, eventsourcing's aggregates with their pending
events, the floor's encoded blobs): what is timed is getting them stored.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import redis.asyncio as aioredis
from eventsourcing.application import Application

from bench import data, es_model, floor
from bench.context import Context
from bench.figures import Figure, Scenario, Variant, repeat_round_robin
from bench.server import drop_workspace
from stageline.events.redis_store import RedisEventStore, connect
from stageline.events.store import AppendRequest

RUNS = 5000
RUNS_PER_ROUND_TRIP = 100
EVENTS_PER_ROUND_TRIP = 1000
UNIT = "events/s"

SHAPES = {
    "run_seq": (False, False, "whole run per call, sequential"),
    "run_pipe": (False, True, f"whole run per call, pipelined ({RUNS_PER_ROUND_TRIP} runs/round trip)"),
    "ev_pipe": (True, True, f"one event per call, pipelined ({EVENTS_PER_ROUND_TRIP} events/round trip)"),
    "ev_seq": (True, False, "one event per call, sequential"),
}  # fmt: skip
"""key -> (one event per call, pipelined, label)."""


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _check(results: list[Any]) -> None:
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise RuntimeError(f"{len(errors)} appends failed, e.g. {errors[0]!r}")


class Append:
    def __init__(self, ctx: Context, store: RedisEventStore, client: aioredis.Redis) -> None:
        self.ctx = ctx
        self.store = store
        self.client = client
        self.floor = floor.Floor(client)
        self.runs = ctx.n(RUNS, 10)
        self.events = self.runs * data.EVENTS_PER_RUN
        self.server_pid = 0

    def _requests(self, ws: str, per_event: bool, pipelined: bool) -> list[AppendRequest]:
        # one round trip per event is slow enough that a fifth of the runs gives the rate
        count = self.runs if pipelined or not per_event else max(2, self.runs // 5)
        runs = data.run_requests(ws, count)
        return data.event_requests(runs) if per_event else runs

    async def _time(
        self, ws: str, body: Callable[[], Awaitable[None]], events: int, fig: Figure
    ) -> float:
        """Events/s of ``body()``; ``ws`` is dropped afterwards.

        The CPU the bench process and redis-server spent meanwhile, per event, goes to
        ``fig.detail``: it tells a client-side cost from a server-side one.
        """
        try:
            server = psutil.Process(self.server_pid)
            cpu0, srv0 = time.process_time(), sum(server.cpu_times()[:2])
            started = time.perf_counter()
            await body()
            seconds = time.perf_counter() - started
            cpu1, srv1 = time.process_time(), sum(server.cpu_times()[:2])
        finally:
            await drop_workspace(self.client, ws, floor.PREFIX)
        fig.detail.setdefault("client_cpu_us_per_event", []).append(
            round((cpu1 - cpu0) / events * 1e6, 2)
        )
        fig.detail.setdefault("server_cpu_us_per_event", []).append(
            round((srv1 - srv0) / events * 1e6, 2)
        )
        return events / seconds

    async def stageline(self, per_event: bool, pipelined: bool, fig: Figure) -> float:
        """Events/s of stageline's store appending the runs."""
        ws = self.ctx.workspace("append")
        requests = self._requests(ws, per_event, pipelined)
        events = sum(len(r.events) for r in requests)
        size = EVENTS_PER_ROUND_TRIP if per_event else RUNS_PER_ROUND_TRIP

        async def body() -> None:
            if pipelined:
                for chunk in _chunks(requests, size):
                    _check(await self.store.append_batch(chunk))
            else:
                for r in requests:
                    await self.store.append(ws, r.stream, r.events, r.expected_version)

        return await self._time(ws, body, events, fig)

    async def bare_floor(self, per_event: bool, pipelined: bool, fig: Figure) -> float:
        """Events/s of the bare Lua script appending the same runs."""
        ws = self.ctx.workspace("floor")
        requests = self._requests(ws, per_event, pipelined)
        events = sum(len(r.events) for r in requests)
        calls = floor.calls(requests)
        size = EVENTS_PER_ROUND_TRIP if per_event else RUNS_PER_ROUND_TRIP
        await self.floor.load()

        async def body() -> None:
            if pipelined:
                for chunk in _chunks(calls, size):
                    await self.floor.pipelined(chunk)
            else:
                for call in calls:
                    await self.floor.one(call)

        return await self._time(ws, body, events, fig)

    async def eventsourcing(self, persistence: str) -> float:
        """Events/s of the eventsourcing library saving the runs, one ``save`` per run."""
        runs = [es_model.completed_run(i) for i in range(self.runs)]
        env = {"PERSISTENCE_MODULE": f"eventsourcing.{persistence}"}
        path = self.ctx.root / f"append-{time.monotonic_ns()}.sqlite"
        if persistence == "sqlite":
            env["SQLITE_DBNAME"] = str(path)
        app: Application[Any] = es_model.Runs(env=env)
        try:
            seconds = es_model.save_runs(app, runs)
        finally:
            app.close()
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        return self.events / seconds


def _variant(fig: Figure, call: Callable[[], Awaitable[float]]) -> tuple[Variant, list[Figure]]:
    async def measure() -> dict[str, float]:
        return {fig.key: await call()}

    return measure, [fig]


async def run(ctx: Context) -> Scenario:
    s = Scenario("append", "Durable append: runs x 12 events")
    store = RedisEventStore.from_url(ctx.url)
    client = connect(ctx.url)
    bench = Append(ctx, store, client)
    info: Any = await client.info("server")
    bench.server_pid = int(info["process_id"])
    s.params = {
        "runs": bench.runs,
        "events": bench.events,
        "runs_per_round_trip": RUNS_PER_ROUND_TRIP,
        "events_per_round_trip": EVENTS_PER_ROUND_TRIP,
        "runs_for_one_event_per_call_sequential": max(2, bench.runs // 5),
    }
    sl = {key: s.figure("stageline", label, UNIT) for key, (_, _, label) in SHAPES.items()}
    fl = {key: s.figure("bare Lua floor", label, UNIT) for key, (_, _, label) in SHAPES.items()}
    es_sqlite = s.figure("eventsourcing", "SQLite, one save per run", UNIT)
    es_popo = s.figure("eventsourcing", "in-memory (POPO), one save per run", UNIT)

    variants = []
    for key, (per_event, pipelined, _) in SHAPES.items():
        variants.append(
            _variant(sl[key], lambda a=per_event, b=pipelined, f=sl[key]: bench.stageline(a, b, f))
        )
        variants.append(
            _variant(fl[key], lambda a=per_event, b=pipelined, f=fl[key]: bench.bare_floor(a, b, f))
        )
    variants.append(_variant(es_sqlite, lambda: bench.eventsourcing("sqlite")))
    variants.append(_variant(es_popo, lambda: bench.eventsourcing("popo")))
    try:
        await repeat_round_robin(s, variants, repeat=ctx.repeat, warmup=ctx.warmup, log=ctx.log)
    finally:
        await store.close()
        await client.aclose()
    for fig in s.figures.values():  # the CPU detail of warm-up rounds is not kept either
        for name, values in fig.detail.items():
            fig.detail[name] = values[-ctx.repeat :]
    for key in ("run_seq", "run_pipe"):
        s.ratio(f"{SHAPES[key][2]}: stageline / eventsourcing SQLite", sl[key], es_sqlite)
        s.ratio(f"{SHAPES[key][2]}: stageline / eventsourcing POPO", sl[key], es_popo)
    for key, (_, _, label) in SHAPES.items():
        s.ratio(f"{label}: stageline / bare Lua floor", sl[key], fl[key])
    s.notes.append(
        "Events are built before timing for every system; eventsourcing runs with its defaults "
        "(SQLite in WAL mode, JSON transcoder); stageline's server has AOF on, appendfsync "
        "everysec. The floor appends stageline's encoded blobs, encoded before timing."
    )
    return s
