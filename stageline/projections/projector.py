"""The projector: follows every workspace's log and keeps its run-status view current.

Per workspace it reads the log after the view's checkpoint in batches, folds
each batch and writes changes plus the new checkpoint in one guarded query.
A write that fails or finds the checkpoint moved is never skipped: the
projector reloads the stored checkpoint and reads on from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from stageline.events import EventStore, RecordedEvent
from stageline.projections.batch import fold
from stageline.projections.changes import RunStatusChanges

__all__ = ["Projector", "RebuildResult", "RunStatusView", "next_delay"]

log = structlog.get_logger("stageline.projections")


class RunStatusView(Protocol):
    """Where the projector writes: a view store with a guarded, checkpointed write."""

    async def apply(self, workspace: str, changes: RunStatusChanges, *, expected: int) -> bool:
        """Write changes and move the checkpoint from ``expected``; False if it was elsewhere."""
        ...

    async def checkpoint(self, workspace: str) -> int: ...

    async def drop(self, workspace: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RebuildResult:
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        """Events replayed per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def next_delay(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based) of a failed batch."""
    return min(0.05 * 2 ** (attempt - 1), 5.0)


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Projector:
    """Keeps the run-status view of every workspace of ``store`` up to date in ``views``.

    ``block_ms`` bounds how long an idle workspace's read blocks (and so how
    soon ``run`` notices its stop event); ``rescan_s`` is how often the list of
    workspaces is read again to pick up new ones.
    """

    def __init__(
        self,
        store: EventStore,
        views: RunStatusView,
        *,
        batch_size: int = 1000,
        block_ms: int = 200,
        rescan_s: float = 0.1,
    ) -> None:
        self.store = store
        self.views = views
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.rescan_s = rescan_s

    async def run(self, stop: asyncio.Event) -> None:
        """Project every workspace, old and new, until ``stop`` is set."""
        followers: dict[str, asyncio.Task[None]] = {}
        try:
            while not stop.is_set():
                try:
                    workspaces = await self.store.workspaces()
                except Exception:
                    log.exception("projector.workspaces_failed")
                    workspaces = []
                for ws in workspaces:
                    if ws not in followers:
                        followers[ws] = asyncio.create_task(self._follow(ws, stop))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rescan_s)
        finally:
            # followers notice ``stop`` within one block_ms; cancel them only if we are
            if not stop.is_set():
                for task in followers.values():
                    task.cancel()
            await asyncio.gather(*followers.values(), return_exceptions=True)

    async def _follow(self, workspace: str, stop: asyncio.Event) -> None:
        position: int | None = None
        failures = 0
        while not stop.is_set():
            try:
                if position is None:
                    position = await self.views.checkpoint(workspace)
                events = await self.store.tail(
                    workspace, after=position, limit=self.batch_size, block_ms=self.block_ms
                )
                if len(events) == self.batch_size:  # a backlog: replay it with overlapping batches
                    await self._apply(workspace, events, position)
                    await self.catch_up(workspace)
                    position = None
                elif events:
                    position = await self._apply(workspace, events, position)
                failures = 0
            except Exception as exc:
                failures += 1
                delay = next_delay(failures)
                # the traceback once per outage: a long one must not flood the log
                log.warning(
                    "projector.batch_failed",
                    workspace=workspace,
                    after=position,
                    retry_in=delay,
                    failures=failures,
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=failures == 1,
                )
                position = None  # the write may or may not have landed: ask the view
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _apply(self, workspace: str, events: Sequence[RecordedEvent], position: int) -> int:
        """Write one batch read after ``position``; the position to read on from."""
        changes = self._fold(workspace, events)
        # once sent, let the write finish even if we are cancelled: the guard keeps it exact
        if await asyncio.shield(self.views.apply(workspace, changes, expected=position)):
            return changes.position
        return await self._moved(workspace, position)

    @staticmethod
    def _fold(workspace: str, events: Sequence[RecordedEvent]) -> RunStatusChanges:
        changes = fold(events)
        if changes.rejected:
            log.warning(
                "projector.events_rejected", workspace=workspace, positions=changes.rejected
            )
        return changes

    async def _moved(self, workspace: str, expected: int) -> int:
        stored = await self.views.checkpoint(workspace)
        log.info("projector.checkpoint_moved", workspace=workspace, expected=expected, found=stored)
        return stored

    async def project_once(self, workspace: str) -> int:
        """Project one batch after the stored checkpoint; the number of events it held."""
        position = await self.views.checkpoint(workspace)
        events = await self.store.read_log(workspace, after=position, limit=self.batch_size)
        if events:
            await self._apply(workspace, events, position)
        return len(events)

    async def catch_up(self, workspace: str) -> int:
        """Project everything up to the log's current head; the number of events applied."""
        head = await self.store.head(workspace)
        return await self._replay(workspace, until=head, batch_size=self.batch_size)

    async def lag(self, workspace: str) -> int:
        """How many log positions the view is behind the log."""
        head = await self.store.head(workspace)
        return max(head - await self.views.checkpoint(workspace), 0)

    async def rebuild(self, workspace: str, *, batch_size: int | None = None) -> RebuildResult:
        """Drop the view and replay the log from position 0 up to its current head.

        A projector running elsewhere meanwhile finds its checkpoint gone and
        replays too; the guard lets each batch land once, so ``events`` counts
        the batches this call wrote, which may then be fewer than the log holds.
        """
        started = time.perf_counter()
        await self.views.drop(workspace)
        head = await self.store.head(workspace)
        events = await self._replay(workspace, until=head, batch_size=batch_size or self.batch_size)
        result = RebuildResult(events=events, seconds=time.perf_counter() - started)
        log.info("projector.rebuilt", workspace=workspace, events=events, seconds=result.seconds)
        return result

    async def _replay(self, workspace: str, *, until: int, batch_size: int) -> int:
        """Project the log up to position ``until``; the number of events this call applied.

        Three batches are in flight at once: one being written, the next being
        folded, the one after being read, so Python, Redis and FalkorDB overlap.
        A batch is only sent once the write before it has succeeded.
        """

        async def read(after: int) -> list[RecordedEvent]:
            limit = min(batch_size, until - after)
            return (
                await self.store.read_log(workspace, after=after, limit=limit) if limit > 0 else []
            )

        position = await self.views.checkpoint(workspace)
        applied = 0
        reading = asyncio.create_task(read(position))
        writing: asyncio.Task[bool] | None = None
        sent = RunStatusChanges()
        try:
            while True:
                events = await reading
                if events:
                    reading = asyncio.create_task(read(events[-1].position))
                changes = self._fold(workspace, events)
                if writing is not None:
                    if await asyncio.shield(writing):
                        position, applied = sent.position, applied + sent.events
                    else:  # another writer moved the checkpoint: drop what we read ahead
                        reading.cancel()
                        position = await self._moved(workspace, position)
                        reading = asyncio.create_task(read(position))
                        writing = None
                        continue
                if not events:
                    return applied
                sent = changes
                writing = asyncio.create_task(
                    self.views.apply(workspace, changes, expected=position)
                )
        finally:
            reading.cancel()
            for task in (reading, writing):
                if task is not None:  # a failure we are not raising is not worth a warning
                    task.add_done_callback(_consume)
