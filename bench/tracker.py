"""When each run of a workspace becomes visible as completed in the run-status view.

Two loops in the bench process: one follows the workspace log (the public
``read_log``) and notes the position of every ``RunCompleted``; the other polls
the run-status projection's checkpoint every ~2 ms (5 ms in throughput rounds, where
the bench's own reads would cost the server more) and notes when it moved.
A run is visible from the first checkpoint observation at or past its
``RunCompleted``: exactly what a read with ``min_position`` would wait for.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time

from stageline.events.redis_store import RedisEventStore
from stageline.projections.falkordb_views import FalkorDBViews

POLL_S = 0.002
PAGE = 5000
PROJECTION = "run_status"


class Tracker:
    def __init__(
        self, store: RedisEventStore, views: FalkorDBViews, workspace: str, poll_s: float = POLL_S
    ) -> None:
        self.poll_s = poll_s
        self.store = store
        self.views = views
        self.workspace = workspace
        self.completed: dict[str, int] = {}  # run id -> position of its RunCompleted
        self.recorded: dict[str, float] = {}  # run id -> when its RunCompleted was appended
        self.failed: list[str] = []
        self.events = 0
        self._times: list[float] = []  # observation times, with the checkpoints seen then
        self._checkpoints: list[int] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    async def __aenter__(self) -> Tracker:
        self._tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._poll())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        # a flag, not only cancel(): a cancellation that lands inside a redis-py call can be
        # swallowed there (CPython gh-86296), and the loop would then never end
        self._stopped = True
        _, pending = await asyncio.wait(self._tasks, timeout=5)
        for task in pending:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _follow(self) -> None:
        after = 0
        while not self._stopped:
            events = await self.store.read_log(self.workspace, after=after, limit=PAGE)
            for e in events:
                if e.type == "RunCompleted":
                    run_id = e.stream.removeprefix("run-")
                    self.completed[run_id] = e.position
                    self.recorded[run_id] = e.recorded_at.timestamp()
                elif e.type == "RunFailed":
                    self.failed.append(e.stream)
            if events:
                after = events[-1].position
                self.events += len(events)
            if len(events) < PAGE:
                await asyncio.sleep(self.poll_s)

    async def _poll(self) -> None:
        while not self._stopped:
            checkpoint = await self.views.checkpoint(self.workspace, PROJECTION)
            now = time.perf_counter()
            if not self._checkpoints or checkpoint > self._checkpoints[-1]:
                self._times.append(now)
                self._checkpoints.append(checkpoint)
            await asyncio.sleep(self.poll_s)

    def visible_at(self, run_id: str) -> float | None:
        """When the view was first seen holding the run's completion (perf_counter)."""
        position = self.completed.get(run_id)
        if position is None:
            return None
        i = bisect.bisect_left(self._checkpoints, position)
        return self._times[i] if i < len(self._times) else None

    def visible(self, run_ids: list[str]) -> dict[str, float]:
        out = {}
        for run_id in run_ids:
            at = self.visible_at(run_id)
            if at is not None:
                out[run_id] = at
        return out

    async def wait_visible(self, run_ids: list[str], timeout: float) -> dict[str, float]:
        """Wait until every run is visible; their visible times. Raises on a failed run."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.completed) >= len(run_ids) and all(r in self.completed for r in run_ids):
                last = max(self.completed[r] for r in run_ids)
                if self._checkpoints and self._checkpoints[-1] >= last:
                    return self.visible(run_ids)
            if self.failed:
                raise RuntimeError(f"{len(self.failed)} runs failed, e.g. {self.failed[0]}")
            for task in self._tasks:
                if task.done():
                    raise RuntimeError("the tracker stopped") from task.exception()
            if time.monotonic() > deadline:
                seen = self.visible(run_ids)
                raise TimeoutError(
                    f"{len(run_ids) - len(seen)} of {len(run_ids)} runs not visible "
                    f"after {timeout}s ({len(self.completed)} completed in the log)"
                )
            await asyncio.sleep(0.005)
