"""Folds a rebuild's batches in worker processes, while the rebuilding process writes them.

A rebuild is bound by Python's CPU: reading a batch of log events, decoding
them, folding them and building the write's query take 8-10 µs per event, more
than the server takes to serve the read and apply the write. A batch's fold
depends on its events alone (changes compose, see ``changes``), so batches can
be folded anywhere and in any order; only their writes must land in log order,
each guarded by the checkpoint the one before leaves.

``FoldPool`` runs ``workers`` processes. Each has its own connection to the
store, reads the log range it is given, folds it and sends back the write's
query text (its rows are in its header); the projector writes those in order.
The processes start from a fork server (the rebuilding process runs an event
loop, with threads and sockets open), and a worker imports the main script of
the program it serves, as ``multiprocessing`` does: a script of yours that
rebuilds must keep its work under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import pickle
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from stageline.errors import InvalidArgument
from stageline.events.redis_store import RedisEventStore
from stageline.gctune import tune_gc
from stageline.projections.changes import Changes
from stageline.projections.projection import Projection, Write

__all__ = ["FoldPool", "Folded"]


@dataclass(slots=True)
class Folded(Changes):
    """A batch's changes as a worker sends them back: the tallies, and whether the
    write has rows (they are in its query, built by the worker)."""

    rows: bool = False

    @property
    def has_rows(self) -> bool:
        return self.rows


class _Worker:
    """A worker process's own event loop and store connection."""

    def __init__(self, store_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = RedisEventStore.from_url(store_url)


_worker: _Worker | None = None


def _start(store_url: str) -> None:
    global _worker
    # a terminal's Ctrl-C reaches the whole process group: the rebuilding process stops the
    # rebuild, and a worker finishes the fold it holds, then exits
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_gc()
    _worker = _Worker(store_url)


def _fold(
    workspace: str, projection: Projection[Any], after: int, until: int
) -> tuple[str, int, list[int], bool]:
    """Fold the log's events after ``after`` up to ``until``: the write's query (expecting the
    checkpoint at ``after``, moving it to ``until``), the events, the rejected, and whether
    it has rows."""
    assert _worker is not None, "started by _start"
    read = _worker.store.read_log(workspace, after=after, limit=until - after)
    events = _worker.loop.run_until_complete(read)
    if events and events[-1].position > until:  # the log skips a position: read on past it
        events = [e for e in events if e.position <= until]
    changes = projection.fold(events)
    # every position up to until is folded: one the log skips was never written, and never
    # will be (positions are handed out in order, up to the head the rebuild read)
    changes.position = until
    return (
        Write(projection, changes, after).query(),
        changes.events,
        changes.rejected,
        changes.has_rows,
    )


def _context() -> multiprocessing.context.BaseContext:
    # not fork: the rebuilding process runs an event loop, with threads and sockets open
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # the workers fork from a server that imported this module once (if it starts now)
    context.set_forkserver_preload([__name__])
    return context


class FoldPool:
    """Where a rebuild folds its batches: ``workers`` processes reading ``store_url``.

    A rebuild starts them for its own length, unless the pool is already
    open (``async with pool:``), as for several rebuilds in a row.
    """

    def __init__(self, store_url: str, workers: int) -> None:
        if workers < 1:
            raise InvalidArgument("a fold pool needs at least one worker", workers=workers)
        self.store_url = store_url
        self.workers = workers
        self._open: _Folding | None = None

    async def __aenter__(self) -> FoldPool:
        if self._open is not None:
            raise RuntimeError("the fold pool is open already")
        self._open = self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        folding, self._open = self._open, None
        if folding is not None:
            await folding.stop(wait=exc[0] is None)

    @staticmethod
    def can_fold(projection: Projection[Any]) -> bool:
        """Whether a worker can be handed the projection (its fold is no lambda, say)."""
        try:
            pickle.dumps(projection)
        except (pickle.PicklingError, AttributeError, TypeError):
            return False
        return True

    @contextlib.asynccontextmanager
    async def started(self) -> AsyncIterator[_Folding]:
        """The pool's processes: those of the open pool, or started for this block and
        stopped after it."""
        if self._open is not None:
            yield self._open
            return
        folding = self._start()
        try:
            yield folding
        except BaseException:
            await folding.stop(wait=False)
            raise
        await folding.stop(wait=True)

    def _start(self) -> _Folding:
        executor = ProcessPoolExecutor(
            self.workers, mp_context=_context(), initializer=_start, initargs=(self.store_url,)
        )
        return _Folding(executor)


class _Folding:
    def __init__(self, executor: ProcessPoolExecutor) -> None:
        self._executor = executor

    async def fold(
        self, workspace: str, projection: Projection[Any], after: int, until: int
    ) -> Write:
        """The write of the log's events after ``after`` up to ``until``, expecting the
        checkpoint at ``after``."""
        loop = asyncio.get_running_loop()
        query, events, rejected, rows = await loop.run_in_executor(
            self._executor, _fold, workspace, projection, after, until
        )
        changes = Folded(position=until, events=events, rejected=rejected, rows=rows)
        return Write.built(projection, changes, after, query)

    async def stop(self, *, wait: bool) -> None:
        """Stop the processes: once they are idle (``wait``, off the event loop), or on
        the way out of a failure, without waiting for the folds they hold (each
        exits once its fold is done)."""
        if wait:
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        else:
            self._executor.shutdown(wait=False, cancel_futures=True)
