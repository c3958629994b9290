"""Read-your-writes: how soon a read that waits for its own write gets through.

``python -m bench.waits [--clients N]... [--seconds S]``: a ``stageline projector``
process follows the log of a fresh embedded server; each client appends a run's 12
events (``RedisEventStore.append``) and then waits, as ``GET /v1/runs/{id}?min_position=``
does (``FalkorDBViews.wait_for``), until the run-status view holds the position the
append returned; again, for ``--seconds``. Prints, per number of clients: waits/s, p50
and p99 from the append's return to the wait's, and the checkpoint reads the server
answered per wait (``GRAPH.RO_QUERY`` in ``INFO commandstats``). Not part of ``python -m
bench``: it has no peer to compare with.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from bench import data
from bench.live_stageline import REPO, _commandstats
from bench.procs import READY, Child, bench_env
from bench.server import drop_workspace, embedded
from bench.stats import percentiles
from stageline.events.redis_store import RedisEventStore, connect
from stageline.projections.falkordb_views import FalkorDBViews


async def measure(url: str, clients: int, seconds: float) -> dict[str, Any]:
    store = RedisEventStore.from_url(url)
    views = FalkorDBViews.from_url(url)
    client = connect(url)
    ws = f"waits-{clients}-{uuid.uuid4().hex[:8]}"
    waited: list[float] = []

    async def append_and_wait(i: int) -> float:
        stream, events = data.run_events(i)
        result = await store.append(ws, stream, events)
        at = time.perf_counter()
        if not await views.wait_for(ws, result.positions[-1], 30):
            raise TimeoutError(f"the view did not reach {result.positions[-1]} in 30 s")
        return (time.perf_counter() - at) * 1000

    async def one(k: int, until: float) -> None:
        i = k * 1_000_000
        while time.monotonic() < until:
            waited.append(await append_and_wait(i))
            i += 1

    try:
        await append_and_wait(0)  # the projector finds the new workspace
        before = await _commandstats(client)
        started = time.monotonic()
        await asyncio.gather(*(one(k + 1, started + seconds) for k in range(clients)))
        elapsed = time.monotonic() - started
        after = await _commandstats(client)
        reads = after.get("graph.RO_QUERY", (0, 0))[0] - before.get("graph.RO_QUERY", (0, 0))[0]
        return {
            "clients": clients,
            "waits_per_s": len(waited) / elapsed,
            **percentiles(waited),
            "reads_per_wait": reads / len(waited),
        }
    finally:
        try:
            await drop_workspace(client, ws)
        finally:
            await views.close()
            await store.close()
            await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.waits", description=__doc__)
    parser.add_argument("--clients", type=int, action="append", help="default: 1 and 16")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with embedded() as (url, root):
        env = bench_env(url, {"PYTHONPATH": str(REPO)})
        with Child("stageline-projector", ["-m", "stageline", "projector"], env, root) as child:
            child.wait_for_line(READY)
            print("| clients | waits/s | p50 ms | p99 ms | checkpoint reads per wait |")
            print("|---|---|---|---|---|")
            for clients in args.clients or [1, 16]:
                r = asyncio.run(measure(url, clients, args.seconds))
                print(
                    f"| {clients} | {r['waits_per_s']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} "
                    f"| {r['reads_per_wait']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
