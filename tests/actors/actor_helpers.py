"""Helpers shared by the actor tests: waiting for runs and counting their transitions."""

from __future__ import annotations

import asyncio
from collections import Counter

import redis.asyncio as aioredis

from stageline.events import keys
from stageline.events.store import EventStore

TERMINAL = ("RunCompleted", "RunFailed", "RunCancelled", "RunCompensated")


async def wait_terminal(
    store: EventStore, workspace: str, run_ids: list[str], within: float = 20
) -> dict[str, str]:
    """Each run's terminal event type; fails the test when one is not terminal in time."""
    done: dict[str, str] = {}
    async with asyncio.timeout(within):
        while len(done) < len(run_ids):
            for run_id in run_ids:
                if run_id in done:
                    continue
                last = await store.read_stream(
                    workspace, keys.run_stream(run_id), backwards=True, limit=1
                )
                if last and last[0].type in TERMINAL:
                    done[run_id] = last[0].type
            await asyncio.sleep(0.02)
    return done


async def transitions(
    store: EventStore, workspace: str, run_id: str
) -> Counter[tuple[str, int, int]]:
    """How often each (stage event type, stage index, attempt) appears in the run."""
    events = await store.read_stream(workspace, keys.run_stream(run_id))
    return Counter(
        (e.type, e.data["index"], e.data.get("attempt", 1))
        for e in events
        if e.type in ("StageStarted", "StageCompleted", "StageFailed")
    )


async def idle(client: aioredis.Redis, actor: str) -> None:
    """Wait until the actor's group has delivered and acknowledged everything."""
    async with asyncio.timeout(10):
        while True:
            groups = await client.xinfo_groups(keys.stage_channel(actor))
            if all(g["pending"] == 0 and not g.get("lag") for g in groups):
                return
            await asyncio.sleep(0.02)
