"""Appends made at the same moment, sent together: one ``append_batch`` for all of them.

Under load, the callers of an event loop (the API's requests, say) append one request
each at nearly the same time. Sent apart, each pays a round trip of its own, a pooled
connection and the store's script call; gathered, they share one. A request waits for
no timer: those made while the loop runs one step go out together at the next, so an
append made alone goes out as soon as it would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stageline.events.store import AppendRequest, AppendResult

__all__ = ["AppendCoalescer"]

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""What says the server was not reached or did not answer: not one request's fault."""


class _BatchStore(Protocol):
    async def append_batch(
        self, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | Exception]: ...


class AppendCoalescer:
    """``append`` gathers the requests made in one step of the event loop into one
    ``append_batch`` of ``store``. Each caller gets its own request's result or error, as
    ``append_batch`` gives them. When the server cannot be reached (or does not answer in
    time), each caller gets that error: its request may or may not have landed, as for an
    append whose answer was lost. Any other error failing a batch of several requests may
    be one request's own: each is then sent again by itself, so that only its caller gets
    it. Requests must therefore carry their events' ids, so that a request sent again
    that had landed is deduplicated (``Submitter``'s are derived from the run id)."""

    def __init__(self, store: _BatchStore) -> None:
        self.store = store
        self._pending: list[tuple[AppendRequest, asyncio.Future[AppendResult | Exception]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def append(self, request: AppendRequest) -> AppendResult | Exception:
        """The result of ``request`` (an ``Exception`` for one the store refused), as
        ``append_batch`` has it; raises what failed the batch as a whole."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult | Exception] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._send)
        self._pending.append((request, future))
        return await future

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._append(batch))
        self._tasks.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def _append(
        self, batch: list[tuple[AppendRequest, asyncio.Future[AppendResult | Exception]]]
    ) -> None:
        try:
            await self._answer(batch)
        except BaseException as exc:  # to each caller not answered yet
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _answer(
        self, batch: list[tuple[AppendRequest, asyncio.Future[AppendResult | Exception]]]
    ) -> None:
        try:
            results = await self.store.append_batch([request for request, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, _UNREACHABLE):
                raise
            for one in batch:  # each alone: the error goes to its own request's caller
                await self._append([one])
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its caller was cancelled
                future.set_result(result)
