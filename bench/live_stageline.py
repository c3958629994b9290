"""stageline's side of the live pipeline: its processes, submitting runs, timing them.

Two shapes, each in fresh processes against the bench's server:
``up`` is one ``stageline up`` process (actors, projector, reconciler,
ontology reactor and API); ``split`` is a ``stageline worker`` process and a
``stageline projector`` process. The bench process submits runs straight
through ``Submitter`` (what ``POST /v1/runs`` calls: one append, one command)
and times each run from its submit call until the run-status view shows it
completed (``tracker.py``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import data
from bench.context import Context
from bench.procs import READY, Child, bench_env, cpu_seconds
from bench.server import drop_workspace, used_memory
from bench.stats import percentiles
from bench.tracker import Tracker
from stageline.actors.channels import CommandBus
from stageline.actors.pipeline import PipelineCatalog
from stageline.actors.submit import Submitter
from stageline.events.redis_store import RedisEventStore, connect
from stageline.projections.falkordb_views import FalkorDBViews

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 64
MODES = {
    "up": "one `stageline up` process",
    "split": "`stageline worker` + `stageline projector` processes",
}


async def _commandstats(client: aioredis.Redis) -> dict[str, tuple[int, int]]:
    info: Any = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in info.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Throughput:
    runs: int
    seconds: float
    submit_seconds: float
    memory_per_event: float
    cpu_ms_per_run: dict[str, float] = field(default_factory=dict)
    """CPU each process (and redis-server) spent per run during the round."""
    commands_per_run: dict[str, float] = field(default_factory=dict)
    """Redis commands per run (those Lua scripts run too), from INFO commandstats."""
    server_us_per_run: dict[str, float] = field(default_factory=dict)
    """Server time per run by command, from INFO commandstats."""

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.runs * data.EVENTS_PER_RUN / self.seconds


@dataclass
class StagelineLive:
    ctx: Context
    mode: str
    children: list[Child] = field(default_factory=list)
    workspaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store = RedisEventStore.from_url(self.ctx.url)
        self.client: aioredis.Redis = connect(self.ctx.url)
        self.views = FalkorDBViews.from_url(self.ctx.url)
        catalog = PipelineCatalog([data.PIPELINE])
        self.submitter = Submitter(self.store, catalog, CommandBus(self.client))

    def start(self) -> None:
        env = bench_env(self.ctx.url, {"PYTHONPATH": str(REPO)})
        logs = self.ctx.logdir()
        if self.mode == "up":
            argv = ["-m", "bench.stageline_proc", "up", "--port", str(free_port())]
            self.children = [Child("stageline-up", argv, env, logs)]
        else:
            self.children = [
                Child("stageline-worker", ["-m", "bench.stageline_proc", "worker"], env, logs),
                Child("stageline-projector", ["-m", "stageline", "projector"], env, logs),
            ]
        for child in self.children:
            child.wait_for_line(READY)

    def stop(self) -> dict[str, float]:
        """Stop the processes; the peak RSS (MB) of each, by name."""
        peaks = {child.name: child.peak_rss_mb() for child in self.children}
        for child in self.children:
            child.stop()
        return peaks

    async def close(self) -> None:
        for ws in self.workspaces:
            await drop_workspace(self.client, ws)
        await self.views.close()
        await self.store.close()
        await self.client.aclose()

    async def _submit(
        self, ws: str, i: int, started: dict[str, float], wall: dict[str, float] | None = None
    ) -> None:
        at, clock = time.perf_counter(), time.time()
        result = await self.submitter.submit(ws, data.PIPELINE.name, data.item(i))
        started[result.run_id] = at
        if wall is not None:
            wall[result.run_id] = clock

    async def throughput(self, runs: int, timeout: float = 600) -> Throughput:
        """Submit ``runs`` runs (64 at a time) and wait until the view shows them all."""
        ws = self.ctx.workspace("live")
        self.workspaces.append(ws)
        before = await used_memory(self.client)
        limit = asyncio.Semaphore(CONCURRENCY)
        started: dict[str, float] = {}

        async def one(i: int) -> None:
            async with limit:
                await self._submit(ws, i, started)

        pids = {c.name: c.pid for c in self.children} | await self._server_and_self()
        cpu0, stats0 = cpu_seconds(pids), await _commandstats(self.client)
        async with Tracker(self.store, self.views, ws, poll_s=0.005) as tracker:
            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(runs)))
            submitted = time.perf_counter() - t0
            seen = await tracker.wait_visible(list(started), timeout)
        cpu1, stats1 = cpu_seconds(pids), await _commandstats(self.client)
        after = await used_memory(self.client)
        calls = {k: stats1[k][0] - stats0.get(k, (0, 0))[0] for k in stats1}
        usec = {k: stats1[k][1] - stats0.get(k, (0, 0))[1] for k in stats1}
        return Throughput(
            runs=runs,
            seconds=max(seen.values()) - t0,
            submit_seconds=submitted,
            memory_per_event=(after - before) / (runs * data.EVENTS_PER_RUN),
            cpu_ms_per_run={k: round(1000 * (cpu1[k] - cpu0[k]) / runs, 3) for k in pids},
            commands_per_run={k: round(v / runs, 2) for k, v in calls.items() if v},
            server_us_per_run={k: round(v / runs, 1) for k, v in usec.items() if v},
        )

    async def _server_and_self(self) -> dict[str, int]:
        info: Any = await self.client.info("server")
        return {"redis-server": int(info["process_id"]), "bench (submitter, tracker)": os.getpid()}

    async def _aof_rewrites(self) -> int:
        info: Any = await self.client.info("persistence")
        return int(info["aof_rewrites"])

    async def latency(self, rate: float, seconds: float, timeout: float = 600) -> dict[str, float]:
        """Submit at ``rate`` runs/s for ``seconds``; submit-to-visible percentiles (ms), and
        the same split at each run's ``RunCompleted``: submit to appended (the actors'
        part, from the server's clock) and appended to visible (the projector's); and how
        many AOF rewrites the server started meanwhile (each pauses it, see bench/README)."""
        ws = self.ctx.workspace("live-latency")
        self.workspaces.append(ws)
        count = max(10, round(rate * seconds))
        started: dict[str, float] = {}
        wall: dict[str, float] = {}
        tasks = []
        rewrites = await self._aof_rewrites()
        async with Tracker(self.store, self.views, ws) as tracker:
            t0 = time.perf_counter()
            for i in range(count):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._submit(ws, i, started, wall)))
            await asyncio.gather(*tasks)
            offered = count / (time.perf_counter() - t0)
            seen = await tracker.wait_visible(list(started), timeout)
        rewrites = await self._aof_rewrites() - rewrites
        total = {r: (seen[r] - at) * 1000 for r, at in started.items()}
        appended = {r: (tracker.recorded[r] - wall[r]) * 1000 for r in started}
        lat = percentiles(list(total.values()))
        split = {
            f"{part}_{k}": v
            for part, values in (
                ("to_appended", list(appended.values())),
                ("appended_to_visible", [total[r] - appended[r] for r in started]),
            )
            for k, v in percentiles(values).items()
            if k in ("p50", "p99")
        }
        return {"rate": rate, "offered": offered, **lat, **split, "aof_rewrites": rewrites}
