"""The projector: follows every workspace's log and keeps each projection's view current.

Per workspace it reads the log in batches after the lowest checkpoint of its
projections, gives each projection the events after its own checkpoint, folds
them and writes every projection's changes plus its new checkpoint in one
guarded query each (all of a batch's queries in one round trip). A write that
fails or finds its checkpoint moved is never skipped: the projector reloads
the stored checkpoint and reads on from there. A projection behind the others
(new, or being rebuilt) catches up from the same reads, while the others,
already past those events, are given none of them.

All workspaces are read by one blocking read on one connection; a workspace
with a backlog is replayed apart, so it neither waits on nor delays the others.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from stageline.errors import InvalidArgument
from stageline.events import EventStore, RecordedEvent
from stageline.projections import registry
from stageline.projections.changes import Changes
from stageline.projections.fold_pool import FoldPool
from stageline.projections.projection import Projection, Write

__all__ = ["Projector", "RebuildResult", "ViewStore", "next_delay"]

log = structlog.get_logger("stageline.projections")

Positions = dict[str, int]
"""Projection name -> the log position its view has applied."""


class ViewStore(Protocol):
    """Where the projector writes: guarded, checkpointed writes per projection."""

    async def apply_all(self, workspace: str, writes: Sequence[Write]) -> list[bool]:
        """Write each projection's changes and move its checkpoint from ``expected``.

        One result per write: False if its checkpoint was elsewhere, or its view in
        another shape (nothing written).
        """
        ...

    async def checkpoints(self, workspace: str, names: Iterable[str]) -> dict[str, int]:
        """The stored checkpoints of the projections ``names`` (a missing one is 0)."""
        ...

    async def drop(self, workspace: str, projection: Projection[Any]) -> None: ...

    async def drop_outdated(self, workspace: str, projections: Iterable[Projection[Any]]) -> None:
        """Drop each of the views an older stageline wrote in another shape (to rebuild);
        ``ViewOfNewerVersion`` for one a newer stageline wrote."""
        ...


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """A rebuilt view: up to log position ``head``, of which this call wrote ``events``
    (a projector running meanwhile may have written the rest)."""

    projection: str
    head: int
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        """Log positions rebuilt per second."""
        return self.head / self.seconds if self.seconds > 0 else 0.0


def next_delay(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based) of a failed batch."""
    return min(0.05 * 2 ** (attempt - 1), 5.0)


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _cancel(tasks: Iterable[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
        task.add_done_callback(_consume)


def _warn_rejected(workspace: str, p: Projection[Any], changes: Changes) -> None:
    if changes.rejected:
        log.warning(
            "projector.events_rejected",
            workspace=workspace,
            projection=p.name,
            positions=changes.rejected,
        )


def _position(event: RecordedEvent) -> int:
    return event.position


MAX_CATCHING_UP = 4
"""How many workspaces with a backlog ``Projector.run`` replays at once, each by its own task."""
MAX_WRITING = 8
"""How many workspaces' batches ``Projector.run`` writes at once (each takes a connection)."""
READ_AHEAD = 2
"""Batches a replay has read or is reading ahead of the one it folds."""
REBUILD_BATCH = 20_000
"""Events a rebuild folds into one write, unless asked for another size (at least the
projector's batch). A live log interleaves the events of the runs in flight, and each batch
holding a run writes it again: at 10,000 events a run is written about half as often as
at 1,000. On a 240k-event live-shaped log, 20,000 against 10,000 took the server 1.75-1.9 s
of CPU instead of 2.2-2.3 s (66-76k events/s against 56-70k) for 17 MB more peak memory;
runs written one after another rebuild as fast either way."""
POOLED_MIN_BATCHES = 8
"""A rebuild of fewer batches folds them itself: starting the processes of its ``FoldPool``
would take longer than it saves. Measured on two cores: 3 workers were ready 0.27 s after
the pool started under ``python -m``, 0.65 s under the ``stageline`` script (each worker
imports the script's modules); at 4 batches a pooled rebuild took as long as one in process."""


class _Following:
    """What ``Projector.run`` knows of each workspace it follows."""

    def __init__(self) -> None:
        self.positions: dict[str, Positions | None] = {}
        """Each workspace's projection positions; None: to be read from the views."""
        self.catching_up: dict[str, asyncio.Task[int]] = {}
        self.failures: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}
        self.writing = asyncio.Semaphore(MAX_WRITING)

    def failed(self, workspace: str, exc: BaseException, now: float) -> None:
        """Leave ``workspace`` alone for a growing delay; its positions are read again after."""
        failures = self.failures[workspace] = self.failures.get(workspace, 0) + 1
        delay = next_delay(failures)
        # the traceback once per outage: a long one must not flood the log
        log.warning(
            "projector.batch_failed",
            workspace=workspace,
            after=self.positions.get(workspace),
            retry_in=delay,
            failures=failures,
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc if failures == 1 else False,
        )
        self.positions[workspace] = None  # the writes may or may not have landed: ask the views
        self.retry_at[workspace] = now + delay

    def succeeded(self, workspace: str, positions: Positions) -> None:
        self.positions[workspace] = positions
        self.failures.pop(workspace, None)
        self.retry_at.pop(workspace, None)

    def reap(self) -> None:
        """Forget the replays that ended; a failed one counts as a failed batch."""
        for ws, task in list(self.catching_up.items()):
            if not task.done():
                continue
            del self.catching_up[ws]
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                self.failed(ws, exc, asyncio.get_running_loop().time())
            else:
                self.failures.pop(ws, None)


class Projector:
    """Keeps every projection of every workspace of ``store`` up to date in ``views``.

    ``projections`` defaults to every registered one (``registry.PROJECTIONS``);
    ``block_ms`` bounds how long ``run``'s read of the logs blocks when they are
    idle (and so how soon it notices its stop event); ``rescan_s`` is how often
    the list of workspaces is read again (a new workspace's first append also
    wakes the read, see ``EventStore.tail``; the scan is what finds one whose
    announcement was missed). ``fold_pool``, if given, folds the batches of a
    long rebuild in other processes.
    """

    def __init__(
        self,
        store: EventStore,
        views: ViewStore,
        *,
        projections: Sequence[Projection[Any]] = registry.PROJECTIONS,
        batch_size: int = 1000,
        block_ms: int = 200,
        rescan_s: float = 0.1,
        fold_pool: FoldPool | None = None,
    ) -> None:
        self.store = store
        self.views = views
        self.projections = tuple(projections)
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.rescan_s = rescan_s
        self.fold_pool = fold_pool

    def projection(self, name: str) -> Projection[Any]:
        """This projector's projection called ``name``; ``InvalidArgument`` naming them if none."""
        for projection in self.projections:
            if projection.name == name:
                return projection
        names = ", ".join(p.name for p in self.projections)
        raise InvalidArgument(f"no projection named {name!r}; projections: {names}")

    async def run(self, stop: asyncio.Event) -> None:
        """Project every workspace, old and new, until ``stop`` is set.

        One blocking read waits on the logs of all the workspaces at once, so
        an idle projector holds one connection however many workspaces there
        are. A workspace whose read filled a batch has a backlog: it is taken
        out of the shared read and replayed by its own task (at most
        ``MAX_CATCHING_UP`` at a time), with reads, folds and writes
        overlapping, until it reaches its head.
        """
        follow = _Following()
        loop = asyncio.get_running_loop()
        next_scan = 0.0
        try:
            while not stop.is_set():
                if loop.time() >= next_scan:
                    await self._scan(follow)
                    next_scan = loop.time() + self.rescan_s
                follow.reap()
                after = await self._ready(follow, loop.time())
                block_ms = min(self.block_ms, max(int((next_scan - loop.time()) * 1000), 1))
                try:  # with no workspace to read, it waits for a new one
                    batches = await self.store.tail(
                        after, limit=self.batch_size, block_ms=block_ms, new_workspaces=True
                    )
                except Exception as exc:
                    for ws in after:
                        follow.failed(ws, exc, loop.time())
                    if not after:  # nothing to back off: wait as the read would have
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), block_ms / 1000)
                    continue
                for ws in batches:  # a new workspace comes with no events: follow it now
                    follow.positions.setdefault(ws, None)
                # the workspaces' writes side by side (MAX_WRITING at a time), each shielded
                await asyncio.gather(
                    *(self._step(follow, ws, events) for ws, events in batches.items() if events)
                )
        finally:
            tasks = list(follow.catching_up.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _scan(self, follow: _Following) -> None:
        try:
            workspaces = await self.store.workspaces()
        except Exception:
            log.exception("projector.workspaces_failed")
            return
        for ws in workspaces:
            follow.positions.setdefault(ws, None)
        for ws in follow.positions.keys() - set(workspaces) - follow.catching_up.keys():
            del follow.positions[ws]  # its log is gone

    async def _ready(self, follow: _Following, now: float) -> dict[str, int]:
        """The workspaces to read now, each with the position to read after."""
        after = {}
        for ws, positions in follow.positions.items():
            if ws in follow.catching_up or follow.retry_at.get(ws, 0.0) > now:
                continue
            if positions is None:
                try:
                    positions = follow.positions[ws] = await self._load(ws, self.projections)
                except Exception as exc:
                    follow.failed(ws, exc, now)
                    continue
            after[ws] = min(positions.values())
        return after

    async def _step(self, follow: _Following, workspace: str, events: list[RecordedEvent]) -> None:
        positions = follow.positions[workspace]
        assert positions is not None
        try:
            async with follow.writing:
                positions = await self._apply(workspace, events, positions)
        except Exception as exc:
            follow.failed(workspace, exc, asyncio.get_running_loop().time())
            return
        follow.succeeded(workspace, positions)
        if len(events) == self.batch_size and len(follow.catching_up) < MAX_CATCHING_UP:
            follow.positions[workspace] = None  # reloaded once the replay is over
            follow.catching_up[workspace] = asyncio.create_task(self.catch_up(workspace))

    async def _load(self, workspace: str, projections: Sequence[Projection[Any]]) -> Positions:
        await self.views.drop_outdated(workspace, projections)  # read back as 0: rebuilt
        stored = await self.views.checkpoints(workspace, [p.name for p in projections])
        return {p.name: stored.get(p.name, 0) for p in projections}

    def _fold(
        self,
        workspace: str,
        events: Sequence[RecordedEvent],
        positions: Positions,
        projections: Sequence[Projection[Any]],
    ) -> list[Write]:
        """Each projection's write of the events after its own position (none if it has none)."""
        writes = []
        for p in projections:
            after = positions[p.name]
            start = bisect.bisect_right(events, after, key=_position)
            if start == len(events):
                continue  # the projection is past this batch already
            changes = p.fold(events[start:] if start else events)
            _warn_rejected(workspace, p, changes)
            writes.append(Write(p, changes, after))
        return writes

    async def _apply(
        self, workspace: str, events: Sequence[RecordedEvent], positions: Positions
    ) -> Positions:
        """Write one batch read after the lowest of ``positions``; the positions to read on from."""
        writes = self._fold(workspace, events, positions, self.projections)
        # once sent, let the writes finish even if we are cancelled: the guards keep them exact
        applied = await asyncio.shield(self.views.apply_all(workspace, writes))
        return await self._settle(workspace, positions, writes, applied)

    async def _settle(
        self, workspace: str, positions: Positions, writes: Sequence[Write], applied: list[bool]
    ) -> Positions:
        """The positions after ``writes``: a refused write's projection reloads its checkpoint
        (another writer moved it: if that was another version of stageline, the view is
        dropped as outdated, or ``ViewOfNewerVersion`` raised, before the reload)."""
        out = dict(positions)
        moved = []
        for write, ok in zip(writes, applied, strict=True):
            out[write.projection.name] = write.changes.position
            if not ok:
                moved.append(write)
        if moved:
            await self.views.drop_outdated(workspace, [w.projection for w in moved])
            stored = await self.views.checkpoints(workspace, [w.projection.name for w in moved])
            for write in moved:
                name = write.projection.name
                out[name] = stored.get(name, 0)
                log.info(
                    "projector.checkpoint_moved",
                    workspace=workspace,
                    projection=name,
                    expected=write.expected,
                    found=out[name],
                )
        return out

    async def project_once(self, workspace: str) -> int:
        """Project one batch after the lowest stored checkpoint; the number of events it held."""
        positions = await self._load(workspace, self.projections)
        events = await self.store.read_log(
            workspace, after=min(positions.values()), limit=self.batch_size
        )
        if events:
            await self._apply(workspace, events, positions)
        return len(events)

    async def catch_up(self, workspace: str) -> int:
        """Project everything up to the log's current head; the number of events applied."""
        head = await self.store.head(workspace)
        return await self._replay(
            workspace, self.projections, until=head, batch_size=self.batch_size
        )

    async def lag(self, workspace: str, projection: str | None = None) -> int:
        """How many log positions the projection (by default the one furthest behind) lags."""
        head = await self.store.head(workspace)
        positions = await self._load(workspace, self.projections)
        if projection is None:
            return max(head - min(positions.values()), 0)
        return max(head - positions[self.projection(projection).name], 0)

    async def rebuild(
        self,
        workspace: str,
        projection: str,
        *,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> RebuildResult:
        """Drop one projection's view and replay the log into it from 0 up to its current head.

        The other projections' views and checkpoints are left as they are. A
        projector running elsewhere meanwhile finds this checkpoint gone and
        replays too; the guard lets each batch land once, so ``events`` counts
        the batches this call wrote, which may then be fewer than the log holds.
        ``progress(position, head)`` is called once the replay starts and after
        every batch written. With a ``fold_pool``, a log of ``POOLED_MIN_BATCHES`` batches
        or more is folded by its processes (started for this call, unless the pool is open),
        if they can be handed the projection (``FoldPool.can_fold``).
        """
        p = self.projection(projection)
        started = time.perf_counter()
        await self.views.drop(workspace, p)
        head = await self.store.head(workspace)
        batch_size = batch_size or max(self.batch_size, REBUILD_BATCH)
        pool = self.fold_pool
        if pool is not None and head >= POOLED_MIN_BATCHES * batch_size and pool.can_fold(p):
            replay = self._replay_pooled(pool, workspace, p, head, batch_size, progress)
        else:
            replay = self._replay(
                workspace, (p,), until=head, batch_size=batch_size, progress=progress
            )
        events = await replay
        result = RebuildResult(p.name, head, events, time.perf_counter() - started)
        log.info(
            "projector.rebuilt",
            workspace=workspace,
            projection=p.name,
            head=head,
            events=events,
            seconds=result.seconds,
        )
        return result

    async def rebuild_all(
        self, workspace: str, *, batch_size: int | None = None
    ) -> list[RebuildResult]:
        """Rebuild every projection, one after another (with one ``fold_pool`` for all)."""
        async with self.fold_pool or contextlib.nullcontext():
            return [
                await self.rebuild(workspace, p.name, batch_size=batch_size)
                for p in self.projections
            ]

    async def _replay_pooled(
        self,
        pool: FoldPool,
        workspace: str,
        p: Projection[Any],
        until: int,
        batch_size: int,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        """``_replay`` of one projection, its batches folded by ``pool``'s processes.

        The workers fold the batches after the one being written; this process
        writes them in log order, each guarded by the checkpoint the one before
        leaves. Once one is refused (another writer moved the checkpoint), the
        rest is replayed here, from the stored checkpoint.
        """
        after = (await self._load(workspace, (p,)))[p.name]
        ranges = deque((a, min(a + batch_size, until)) for a in range(after, until, batch_size))
        if progress is not None:
            progress(after, until)
        applied = 0
        async with pool.started() as folding:
            folds: deque[asyncio.Task[Write]] = deque()
            try:
                while ranges or folds:
                    while ranges and len(folds) < pool.workers + READ_AHEAD:
                        fold = folding.fold(workspace, p, *ranges.popleft())
                        folds.append(asyncio.create_task(fold))
                    write = await folds.popleft()
                    _warn_rejected(workspace, p, write.changes)
                    # once sent, let the write finish even if we are cancelled
                    [ok] = await asyncio.shield(self.views.apply_all(workspace, [write]))
                    if not ok:
                        break
                    applied += write.changes.events
                    if progress is not None:
                        progress(write.changes.position, until)
                else:
                    return applied
            finally:
                _cancel(folds)
        log.info("projector.checkpoint_moved", workspace=workspace, projection=p.name)
        return applied + await self._replay(
            workspace, (p,), until=until, batch_size=batch_size, progress=progress
        )

    async def _replay(
        self,
        workspace: str,
        projections: Sequence[Projection[Any]],
        *,
        until: int,
        batch_size: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Project the log up to position ``until``; how many events this call applied.

        ``progress(position, until)`` is told where the projections stand, at the start
        and after each batch's writes. An event counts once if any projection applied it.

        Python decodes and folds while the server reads and writes: the next
        ``READ_AHEAD`` batches are read by position ahead of the fold (the log's
        positions follow one another), and the next batch is folded, and its query
        built, while the one before is written, expecting that write to land.
        Writes go one at a time, each guarded by the checkpoint the one before
        leaves; once one is refused (another writer moved a checkpoint) the replay
        goes on from the stored checkpoints.
        """
        positions = await self._load(workspace, projections)
        applied = 0
        reads: deque[tuple[int, asyncio.Task[list[RecordedEvent]]]] = deque()
        writing: tuple[list[Write], asyncio.Task[list[bool]]] | None = None
        try:
            while True:  # from where the views stand
                if progress is not None:
                    progress(min(min(positions.values()), until), until)
                ahead = dict(positions)  # as they will be once the writes folded land
                after = min(positions.values())
                folded: list[Write] | None = None
                moved = False
                while not moved:
                    while len(reads) < READ_AHEAD and after < until:
                        limit = min(batch_size, until - after)
                        read = self.store.read_log(workspace, after=after, limit=limit)
                        reads.append((after + limit, asyncio.create_task(read)))
                        after += limit
                    if reads and folded is None:
                        end, reading = reads.popleft()
                        events = await reading
                        last = events[-1].position if events else until
                        if last != end:  # a gap in the log: read on after what came
                            _cancel(task for _, task in reads)
                            reads.clear()
                            after = last
                        batch = self._fold(workspace, events, ahead, projections)
                        for write in batch:
                            write.query()  # built now, while the server writes the one before
                        ahead.update((w.projection.name, w.changes.position) for w in batch)
                        folded = batch or None
                    if writing is None:
                        if folded is not None:
                            task = asyncio.create_task(self.views.apply_all(workspace, folded))
                            writing, folded = (folded, task), None
                        elif not reads:
                            return applied
                        continue
                    if folded is None and reads:
                        continue  # fold the next batch while this one is written
                    sent, task = writing
                    writing = None
                    results = await asyncio.shield(task)
                    positions = await self._settle(workspace, positions, sent, results)
                    applied += max(
                        (w.changes.events for w, ok in zip(sent, results, strict=True) if ok),
                        default=0,
                    )
                    if progress is not None:
                        progress(min(min(positions.values()), until), until)
                    moved = not all(results)  # then the batch folded after it is of no use
                _cancel(task for _, task in reads)
                reads.clear()
        finally:
            # a failure we are not raising is not worth a warning
            _cancel([*(t for _, t in reads), *([writing[1]] if writing else [])])
