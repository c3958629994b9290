"""Re-drives runs that stopped moving, so no run waits forever for a lost command.

A run can be left without any command in flight: a crash or broker outage
between an append and the publish that should follow it (submit, a delayed
retry, a hand-off decided after a clash, any hand-off with a separate broker). The reconciler looks for runs that are
not finished and have had no new event for a while, and nudges each: it sends
a command for the run's current stage at a deliberately stale version, so the
worker's start append clashes and ``decide_start`` picks what to do from the
run's own history (begin, wait for an attempt still in flight, abandon a lost
one, or drop). A nudge to a healthy run is therefore harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from stageline.actors.channels import CommandBus
from stageline.actors.commands import StageCommand
from stageline.actors.decide import RunState, fold_run
from stageline.actors.pipeline import Pipeline
from stageline.events import keys
from stageline.events.store import EventStore

log = structlog.get_logger(__name__)

StaleRuns = Callable[[str, int, int], Awaitable[list[str]]]
"""(workspace, idle since epoch ms, limit) -> ids of unfinished runs idle since then."""
PipelineOf = Callable[[str, RunState], Awaitable[Pipeline | None]]


def nudge(workspace: str, run_id: str, state: RunState, pipeline: Pipeline) -> StageCommand | None:
    """The command that makes a worker re-decide the run's current stage, or None."""
    if state.terminal or state.version < 0 or state.cursor >= len(pipeline.stages):
        return None
    progress = state.stages.get(state.cursor)
    return StageCommand(
        workspace=workspace,
        run_id=run_id,
        pipeline=pipeline.name,
        pipeline_version=pipeline.version,
        index=state.cursor,
        version=state.version - 1,  # stale on purpose: the start clashes, decide_start chooses
        item=state.item,
        attempt=max(progress.attempt if progress else 1, 1),
        correlation_id=state.correlation_id,
        cause=state.cursor_cause,
    )


class Reconciler:
    """Every ``interval`` seconds, nudges unfinished runs idle for ``idle_seconds``."""

    def __init__(
        self,
        store: EventStore,
        bus: CommandBus,
        stale_runs: StaleRuns,
        pipeline_of: PipelineOf,
        *,
        idle_seconds: float = 60.0,
        limit: int = 500,
    ) -> None:
        self.store = store
        self.bus = bus
        self.stale_runs = stale_runs
        self.pipeline_of = pipeline_of
        self.idle_seconds = idle_seconds
        self.limit = limit

    async def pass_once(self, workspace: str, now: float | None = None) -> int:
        """Nudge this workspace's stale runs once; returns how many were nudged."""
        idle_since = int(((now or time.time()) - self.idle_seconds) * 1000)
        out: list[tuple[str, StageCommand]] = []
        for run_id in await self.stale_runs(workspace, idle_since, self.limit):
            state = fold_run(await self.store.read_stream(workspace, keys.run_stream(run_id)))
            pipeline = await self.pipeline_of(workspace, state)
            command = nudge(workspace, run_id, state, pipeline) if pipeline else None
            if command is not None and pipeline is not None:
                out.append((pipeline.stage(command.index).actor, command))
        await self.bus.publish(out)
        if out:
            log.info("reconcile.nudged", workspace=workspace, runs=len(out))
        return len(out)

    async def run(self, stop: asyncio.Event) -> None:
        interval = max(self.idle_seconds / 4, 1.0)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            try:
                for workspace in await self.store.workspaces():
                    await self.pass_once(workspace)
            except Exception as exc:  # Redis or FalkorDB away: the next pass tries again
                log.warning("reconcile.failed", error=f"{type(exc).__name__}: {exc}")
