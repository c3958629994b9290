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
runs. Those it could not move, or must not (a run an import holds: ``held.py``), it
lets be, without reading them again, until an event changes them; those it nudged
that stay as they were it nudges again after one sweep, then two, four, up to 64.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
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
        lost=progress.abandoned if progress else 0,
    )


MAX_BACKOFF_SWEEPS = 64
"""Most sweeps a run nudged and left as it was waits for its next nudge."""


class Sweep:
    """Where the passes over one workspace's stale runs stand, and the runs they hold back.

    A run a pass could not move is held until it changes. A run it nudged is nudged
    again, as long as it has not changed, one sweep later, then two, four and so on up
    to ``MAX_BACKOFF_SWEEPS``: a nudge that moved it changed it, and one that did not
    (an attempt still running, a worker short of its pipeline, a backlog longer than
    the idle time) repeated every pass would only add to the work.
    """

    def __init__(self) -> None:
        self.after: StaleRun | None = None
        """The last run of the page before (None: the next page starts from the oldest)."""
        self.number = 0
        """Sweeps ended so far."""
        self._held: dict[StaleRun, tuple[int, float]] = {}
        """The last sweep's held runs, each as it was then: (nudges, sweep it is due in)."""
        self._holding: dict[StaleRun, tuple[int, float]] = {}
        """This sweep's (so far)."""

    def skips(self, run: StaleRun) -> bool:
        """Whether to let ``run`` be in this sweep (it stays held either way)."""
        held = self._held.get(run)
        if held is None:
            return False
        self._holding[run] = held
        return self.number < held[1]

    def skip(self, run: StaleRun) -> None:
        """Note that ``run`` could not be moved: held until it changes."""
        self._holding[run] = (0, math.inf)

    def nudged(self, run: StaleRun) -> None:
        """Note that ``run`` was nudged: nudged again, unless it changes, after a backoff."""
        times = self._held.get(run, (0, 0.0))[0]
        self._holding[run] = (times + 1, self.number + min(2**times, MAX_BACKOFF_SWEEPS))

    def turn(self, page: list[StaleRun], limit: int) -> None:
        """Move past ``page``; a page short of ``limit`` ends the sweep, and the next begins."""
        if len(page) < limit:
            self.after = None
            self.number += 1
            # runs that changed or ended since are not carried over
            self._held, self._holding = self._holding, {}
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
        runs = [run for run in page if not sweep.skips(run)]
        streams = [keys.run_stream(run_id) for run_id, _ in runs]
        held = await self.store.held_streams(workspace, streams) if runs else {}
        for run, stream in zip(runs, streams, strict=True):
            run_id = run[0]
            state = fold_run(await self.store.read_stream(workspace, stream))
            # an imported run, as imported (or part-way): its stages ran where it came from
            unheld = state.version + 1 > held.get(stream, -1)
            pipeline = await self.pipeline_of(workspace, state) if unheld else None
            command = nudge(workspace, run_id, state, pipeline) if pipeline else None
            if command is not None and pipeline is not None:
                out.append((pipeline.stage(command.index).actor, command))
                sweep.nudged(run)
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
