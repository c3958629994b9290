"""The live feed of a workspace's log: its events as Server-Sent Events, as they land.

What a feed sends (``text/event-stream``), in this order:

* ``retry: 1000`` once, first: how long an ``EventSource`` waits before it reconnects.
* Each event of the log past the starting position, oldest first, as one block::

      id: 42
      event: log
      data: {"event_id": "...", "type": "RunSubmitted", ..., "position": 42, ...}

  ``id`` is the event's log position, which a client sends back as ``Last-Event-ID``
  to resume right after it; ``event`` is always ``log`` (the type is in the data, and
  one name is one listener for a browser); ``data`` is the event exactly as
  ``GET /v1/log`` encodes it in its page.
* When a filter left out the last events of a page, one block holding only ``id:``
  with the position of the last one: it moves ``Last-Event-ID`` past them, so a
  resumed feed does not read them again, and dispatches nothing (a block without
  ``data`` is no event).
* ``: keep-alive`` after ``KEEP_ALIVE_SECONDS`` in which nothing else was sent, so
  that proxies keep an idle connection open.

A feed holds at most one page of events (``PAGE``) and waits for the client to take
each chunk before it reads on. It ends when the client goes, when the app is stopping,
and when the store stops answering (the client then resumes from its last id).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.responses import StreamingResponse

from stageline.api.responses import JSON
from stageline.errors import Unavailable
from stageline.events.envelope import RecordedEvent
from stageline.events.store import EventStore

__all__ = [
    "HEADERS",
    "KEEP_ALIVE",
    "KEEP_ALIVE_SECONDS",
    "MAX_OPEN_FEEDS",
    "PAGE",
    "RETRY_MS",
    "EventStream",
    "FeedFilter",
    "Feeds",
    "encode_page",
    "follow",
]

log = structlog.get_logger("stageline.api")

T = TypeVar("T")

PAGE = 500
"""Most events one read of the log takes, and so most a feed holds at once."""
CHUNK_BYTES = 64 * 1024
"""A page is sent in chunks of about this size."""
KEEP_ALIVE_SECONDS = 15.0
"""A feed that sent nothing for this long sends a comment."""
RETRY_MS = 1000
"""The reconnection delay a feed asks ``EventSource`` clients for."""
MAX_OPEN_FEEDS = 32
"""Feeds one app serves at once: each holds a store connection while it waits, and the
store's pool (100) serves every other request of the process too."""

KEEP_ALIVE = b": keep-alive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Headers of a feed's answer: no cache may keep it, and nginx passes it on unbuffered."""


class EventStream(StreamingResponse):
    """A ``text/event-stream`` answer of bytes ready to send.

    Not FastAPI's ``EventSourceResponse``: a route declaring that one must yield one
    item at a time, which it encodes and sends on its own, where a feed sends a page
    of events in one write.
    """

    media_type = "text/event-stream"


@dataclass(frozen=True, slots=True)
class FeedFilter:
    """Which events a feed sends: of streams named ``stream_prefix``... (every stream when
    None), and of one of ``types`` (every type when empty)."""

    stream_prefix: str | None = None
    types: frozenset[str] = frozenset()

    def admits(self, event: RecordedEvent) -> bool:
        if self.stream_prefix is not None and not event.stream.startswith(self.stream_prefix):
            return False
        return not self.types or event.type in self.types


def encode_page(events: Sequence[RecordedEvent], keep: FeedFilter) -> Iterator[bytes]:
    """The SSE blocks of one page of the log (oldest first), in chunks of ~``CHUNK_BYTES``:
    one block per event ``keep`` admits, and an ``id:``-only block when it left out the last."""
    chunk = bytearray()
    last_sent = None
    for event in events:
        if not keep.admits(event):
            continue
        chunk += b"id: %d\nevent: log\ndata: " % event.position
        JSON.encode_into(event, chunk, -1)  # JSON has no raw line breaks: one data line
        chunk += b"\n\n"
        last_sent = event.position
        if len(chunk) >= CHUNK_BYTES:
            yield bytes(chunk)
            chunk.clear()
    if events and last_sent != events[-1].position:
        chunk += b"id: %d\n\n" % events[-1].position
    if chunk:
        yield bytes(chunk)


class Feeds:
    """The feeds one app has open: at most ``limit`` at once, and all ended by ``stopping``."""

    def __init__(self, stopping: asyncio.Event, limit: int = MAX_OPEN_FEEDS) -> None:
        self.stopping = stopping
        self.limit = limit
        self.open = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``limit`` places while the body runs; ``Unavailable`` if none is free."""
        if self.open >= self.limit:
            raise Unavailable(
                f"{self.open} live feeds are open, the most this server serves; retry later",
                limit=self.limit,
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1


async def follow(
    store: EventStore,
    workspace: str,
    first: Sequence[RecordedEvent],
    after: int,
    keep: FeedFilter,
    stopping: asyncio.Event,
) -> AsyncIterator[bytes]:
    """The feed's bytes: ``first`` (the log's page past ``after``, read before the answer
    started), then each event appended after it as it lands, until ``stopping`` is set
    or the store stops answering."""
    yield b"retry: %d\n\n" % RETRY_MS
    loop = asyncio.get_running_loop()
    events = first
    quiet_until = loop.time() + KEEP_ALIVE_SECONDS
    while True:
        if events:
            for chunk in encode_page(events, keep):
                yield chunk
            after = events[-1].position
            quiet_until = loop.time() + KEEP_ALIVE_SECONDS
        if stopping.is_set():
            return
        if loop.time() >= quiet_until:
            yield KEEP_ALIVE
            quiet_until = loop.time() + KEEP_ALIVE_SECONDS
        wait_ms = max(math.ceil((quiet_until - loop.time()) * 1000), 1)
        try:
            found = await _unless_set(
                stopping, store.tail({workspace: after}, limit=PAGE, block_ms=wait_ms)
            )
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("api.feed_store_unavailable", error=f"{type(exc).__name__}: {exc}")
            return
        if found is None:
            return
        events = found.get(workspace, [])


async def _unless_set(event: asyncio.Event, work: Awaitable[T]) -> T | None:
    """What ``work`` returns, or None as soon as ``event`` is set (``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # nothing is left running: a cancelled read drops its connection (redis-py's way)
        waiter.cancel()
        if not task.done():
            task.cancel()
    return task.result() if task.done() else None
