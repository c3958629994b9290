"""Requests made at the same moment, sent together: one ``append_batch`` for all the
appends, one pipeline for all the Idempotency-Key claims.

Under load, the callers of an event loop (the API's requests, say) append one request
each at nearly the same time. Sent apart, each pays a round trip of its own, a pooled
connection and the store's script call; gathered, they share one. A request waits for
no timer: those made while the loop runs one step go out together at the next, so an
append made alone goes out as soon as it would have.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeAlias, TypeVar

from stageline.events.store import AppendRequest, AppendResult

__all__ = ["AppendCoalescer", "Coalescer"]

Q = TypeVar("Q")
R = TypeVar("R")


class Coalescer(Generic[Q, R]):
    """``call`` gathers the requests made in one step of the event loop into one call of
    ``send``, which answers each request on its own, in the requests' order (for an
    ``append_batch``: a clash, a refusal, an event that will not encode are that
    request's). What fails the batch as a whole (the server unreachable, or not
    answering in time) is raised to each of its callers: each request may or may not
    have landed, as for a request whose answer was lost. A caller cancelled before its
    batch is sent takes its request out of it."""

    def __init__(self, send: Callable[[Sequence[Q]], Awaitable[list[R]]]) -> None:
        self.send = send
        self._pending: list[tuple[Q, asyncio.Future[R]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, request: Q) -> R:
        """The result of ``request`` (for an append, an ``Exception`` for one the store
        refused), as ``send`` has it; raises what failed the batch as a whole."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # one before it stopped with requests never sent
            self._loop, self._pending = loop, []
        future: asyncio.Future[R] = loop.create_future()
        if not self._pending:
            # in a context of its own: the batch's logs are none of its first caller's
            loop.call_soon(self._send, context=contextvars.Context())
        self._pending.append((request, future))
        return await future

    def _send(self) -> None:
        batch = [(request, future) for request, future in self._pending if not future.done()]
        self._pending = []
        if batch:
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self._tasks.add(task)  # held until done: the loop keeps only a weak reference
            task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: list[tuple[Q, asyncio.Future[R]]]) -> None:
        try:
            results = await self.send([request for request, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its caller was cancelled
                future.set_result(result)


AppendCoalescer: TypeAlias = Coalescer[AppendRequest, AppendResult | Exception]
"""Appends gathered into one ``append_batch`` (a store's, or ``outside.append_batch``
bound to one): each request's result, or its error."""
