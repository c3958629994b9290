"""Re-drives runs that stopped moving, so no run waits forever for a lost command.

A run can be left without any command in flight: a crash or broker outage
between an append and the publish that should follow it (submit, a delayed
retry, a hand-off decided after a clash, any hand-off with a separate broker). The reconciler looks for runs that are
not finished and have had no new event for a while, and nudges each: it sends
a command for the run's current stage at a deliberately stale version, so the
worker's start append clashes and ``decide_start`` picks what to do from the
run's own history (begin, wait for an attempt still in flight, abandon a lost
one, or drop). A nudge to a healthy run is therefore harmless.

Each pass takes one page of a workspace's stale runs, oldest first, and the next
pass the page after it, so runs that no nudge can move (a pipeline this process
does not know, an invalid config) cannot hide newer ones: every stale run comes
up within one pass per page of them, and no pass reads more than a page of
runs. Those it could not move it lets be, without reading them again, until an
event changes them.
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

StaleRun = tuple[str, int]
"""A stale run's id and ``updated_at`` (epoch ms of its last event)."""
StaleRuns = Callable[[str, int, int, StaleRun | None], Awaitable[list[StaleRun]]]
"""(workspace, idle since epoch ms, limit, after) -> unfinished runs idle since then, oldest
first (then by id), from just after the run ``after`` (None: from the oldest)."""
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


class Sweep:
    """Where the passes over one workspace's stale runs stand, and the runs they let be."""

    def __init__(self) -> None:
        self.after: StaleRun | None = None
        """The last run of the page before (None: the next page starts from the oldest)."""
        self._stuck: set[StaleRun] = set()
        """Runs the last sweep could not move, each as it was then."""
        self._still: set[StaleRun] = set()
        """Those this sweep could not move (so far)."""

    def skips(self, run: StaleRun) -> bool:
        """Whether ``run`` could not be moved as it is now: let it be (noted for this sweep)."""
        if run in self._stuck:
            self._still.add(run)
            return True
        return False

    def skip(self, run: StaleRun) -> None:
        """Note that ``run`` could not be moved: skipped until it changes."""
        self._still.add(run)

    def turn(self, page: list[StaleRun], limit: int) -> None:
        """Move past ``page``; a page short of ``limit`` ends the sweep, and the next begins."""
        if len(page) < limit:
            self.after = None
            # runs that changed or ended since are not carried over
            self._stuck, self._still = self._still, set()
        else:
            self.after = page[-1]


class Reconciler:
    """Every ``interval`` seconds, nudges a page (``limit``) of each workspace's unfinished
    runs idle for ``idle_seconds``."""

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
        self._sweeps: dict[str, Sweep] = {}

    async def pass_once(self, workspace: str, now: float | None = None) -> int:
        """Nudge the next page of this workspace's stale runs; returns how many were nudged."""
        idle_since = int(((now or time.time()) - self.idle_seconds) * 1000)
        sweep = self._sweeps.setdefault(workspace, Sweep())
        page = await self.stale_runs(workspace, idle_since, self.limit, sweep.after)
        out: list[tuple[str, StageCommand]] = []
        for run in page:
            if sweep.skips(run):
                continue
            run_id = run[0]
            state = fold_run(await self.store.read_stream(workspace, keys.run_stream(run_id)))
            pipeline = await self.pipeline_of(workspace, state)
            command = nudge(workspace, run_id, state, pipeline) if pipeline else None
            if command is not None and pipeline is not None:
                out.append((pipeline.stage(command.index).actor, command))
            else:
                sweep.skip(run)
        await self.bus.publish(out)
        sweep.turn(page, self.limit)
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
                workspaces = await self.store.workspaces()
            except Exception as exc:  # Redis away: the next pass tries again
                log.warning("reconcile.failed", error=f"{type(exc).__name__}: {exc}")
                continue
            for workspace in workspaces:
                try:
                    await self.pass_once(workspace)
                except Exception as exc:  # its view or log away: the others still get their pass
                    log.error(
                        "reconcile.failed",
                        workspace=workspace,
                        error=f"{type(exc).__name__}: {exc}",
                    )
