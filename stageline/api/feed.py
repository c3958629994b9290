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

The feeds of one workspace share one read of its log (``_Tail``): one blocking read at
a time, whose last few pages each feed takes in its own time, encoded once. A feed
further behind than those pages (one resumed from an old id, or a slow client) reads
the log on its own, a page at a time without blocking, until it is back among them. A
feed holds at most one page of events (``PAGE``) and waits for the client to take each
chunk before it reads on. It ends when the client goes, when the app is stopping, and
when the store stops answering (the client then resumes from its last id).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import Counter, deque
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
    "MAX_FOLLOWED_WORKSPACES",
    "MAX_OPEN_FEEDS",
    "PAGE",
    "RECENT_PAGES",
    "RETRY_MS",
    "EventStream",
    "FeedFilter",
    "Feeds",
    "encode_page",
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
MAX_OPEN_FEEDS = 1000
"""Feeds one app serves at once. The feeds of a workspace share one read of its log, so
a feed costs the app memory (a page at most), not a store connection."""
MAX_FOLLOWED_WORKSPACES = 32
"""Workspaces whose feeds one app serves at once: each one's read holds a store connection
while it waits, and the store's pool (100) serves every other request of the process."""
RECENT_PAGES = 4
"""Pages of a workspace's log its shared read keeps, for the feeds a little behind it."""
TAIL_BLOCK_MS = 2000
"""How long one read of a shared tail waits for new events before it reads again."""

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


def _block(event: RecordedEvent) -> bytes:
    """An event's SSE block."""
    block = bytearray(b"id: %d\nevent: log\ndata: " % event.position)
    JSON.encode_into(event, block, -1)  # JSON has no raw line breaks: one data line
    block += b"\n\n"
    return bytes(block)


def encode_page(
    events: Sequence[RecordedEvent], keep: FeedFilter, blocks: Sequence[bytes] | None = None
) -> Iterator[bytes]:
    """The SSE blocks of one page of the log (oldest first), in chunks of ~``CHUNK_BYTES``:
    one block per event ``keep`` admits, and an ``id:``-only block when it left out the last.
    ``blocks`` are the events' blocks when they are encoded already."""
    chunk = bytearray()
    last_sent = None
    for i, event in enumerate(events):
        if not keep.admits(event):
            continue
        chunk += _block(event) if blocks is None else blocks[i]
        last_sent = event.position
        if len(chunk) >= CHUNK_BYTES:
            yield bytes(chunk)
            chunk.clear()
    if events and last_sent != events[-1].position:
        chunk += b"id: %d\n\n" % events[-1].position
    if chunk:
        yield bytes(chunk)


class _Tail:
    """A workspace's log as it grows, read once for every feed of the workspace: one
    blocking read at a time, from where the first feed to wait on it had got to. It keeps
    the last ``RECENT_PAGES`` pages, each event encoded once, and ends when the app is
    stopping or the store stops answering (``ended``)."""

    def __init__(self, store: EventStore, workspace: str, after: int, stopping: asyncio.Event):
        self.store = store
        self.workspace = workspace
        self.head = after
        """The position the log is read up to."""
        self.base = after
        """The pages kept hold the events past this position."""
        self.pages: deque[tuple[Sequence[RecordedEvent], list[bytes]]] = deque()
        self.ended = False
        self.grown = asyncio.get_running_loop().create_future()
        """Done when a page comes or the tail ends (then a new one takes its place)."""
        self.task = asyncio.create_task(self._read(stopping))

    async def _read(self, stopping: asyncio.Event) -> None:
        try:
            while True:
                found = await _unless_set(
                    stopping,
                    self.store.tail(
                        {self.workspace: self.head}, limit=PAGE, block_ms=TAIL_BLOCK_MS
                    ),
                )
                if found is None:
                    return
                page = found.get(self.workspace)
                if not page:
                    continue
                if len(self.pages) == RECENT_PAGES:
                    self.base = self.pages.popleft()[0][-1].position
                self.pages.append((page, [_block(e) for e in page]))
                self.head = page[-1].position
                self._wake()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("api.feed_store_unavailable", error=f"{type(exc).__name__}: {exc}")
        except Exception:  # its feeds end, and their clients resume on a new tail
            log.exception("api.feed_tail_failed", workspace=self.workspace)
        finally:
            self.ended = True
            self._wake()

    def _wake(self) -> None:
        grown, self.grown = self.grown, asyncio.get_running_loop().create_future()
        grown.set_result(None)

    def since(self, after: int) -> tuple[Sequence[RecordedEvent], list[bytes]] | None:
        """The events past ``after`` of the page kept that holds the next one, with their
        blocks (none when ``after`` is at the head or past it); None when the next one is
        older than the pages kept."""
        if after < self.base:
            return None
        for events, blocks in self.pages:
            if events[-1].position > after:
                at = bisect_right(events, after, key=_position)
                return events[at:], blocks[at:]
        return (), []


def _position(event: RecordedEvent) -> int:
    return event.position


class Feeds:
    """The feeds one app has open: at most ``limit`` at once, of at most ``workspaces``
    workspaces, all ended by ``stopping``; and the tail each followed workspace's share."""

    def __init__(
        self,
        stopping: asyncio.Event,
        limit: int = MAX_OPEN_FEEDS,
        workspaces: int = MAX_FOLLOWED_WORKSPACES,
    ) -> None:
        self.stopping = stopping
        self.limit = limit
        self.workspaces = workspaces
        self.open = 0
        self.following: Counter[str] = Counter()
        """Open feeds by workspace."""
        self._tails: dict[str, _Tail] = {}

    @contextmanager
    def slot(self, workspace: str) -> Iterator[None]:
        """Hold one of the ``limit`` places while the body runs; ``Unavailable`` if none is
        free, or if the feed would be of one workspace more than ``workspaces``."""
        if self.open >= self.limit:
            raise Unavailable(
                f"{self.open} live feeds are open, the most this server serves; retry later",
                limit=self.limit,
            )
        if workspace not in self.following and len(self.following) >= self.workspaces:
            raise Unavailable(
                f"live feeds of {len(self.following)} workspaces are open, the most this "
                "server follows at once; retry later",
                limit=self.workspaces,
            )
        self.open += 1
        self.following[workspace] += 1
        try:
            yield
        finally:
            self.open -= 1
            self.following[workspace] -= 1
            if not self.following[workspace]:
                del self.following[workspace]
                tail = self._tails.pop(workspace, None)
                if tail is not None:
                    tail.task.cancel()

    def _tail(self, store: EventStore, workspace: str, after: int) -> _Tail:
        """The workspace's tail, started from ``after`` if it has none (or one that ended)."""
        tail = self._tails.get(workspace)
        if tail is None or tail.ended:
            tail = self._tails[workspace] = _Tail(store, workspace, after, self.stopping)
        return tail

    async def follow(
        self,
        store: EventStore,
        workspace: str,
        first: Sequence[RecordedEvent],
        after: int,
        keep: FeedFilter,
    ) -> AsyncIterator[bytes]:
        """A feed's bytes (it holds a ``slot`` of ``workspace``): ``first`` (the log's page
        past ``after``, read before the answer started), then each event appended after it
        as it lands, until ``stopping`` is set or the store stops answering."""
        yield b"retry: %d\n\n" % RETRY_MS
        loop = asyncio.get_running_loop()
        events: Sequence[RecordedEvent] = first
        blocks: list[bytes] | None = None
        behind = len(first) >= PAGE  # a full page: there may be more to read
        quiet_until = loop.time() + KEEP_ALIVE_SECONDS
        while True:
            if events:
                for chunk in encode_page(events, keep, blocks):
                    yield chunk
                after = events[-1].position
                quiet_until = loop.time() + KEEP_ALIVE_SECONDS
            events, blocks = (), None
            if self.stopping.is_set():
                return
            if loop.time() >= quiet_until:
                yield KEEP_ALIVE
                quiet_until = loop.time() + KEEP_ALIVE_SECONDS
            if behind:  # on its own, a page at a time, until it is among the tail's pages
                try:
                    events = await store.read_log(workspace, after=after, limit=PAGE)
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    log.warning("api.feed_store_unavailable", error=f"{type(exc).__name__}: {exc}")
                    return
                behind = len(events) >= PAGE
                continue
            tail = self._tail(store, workspace, after)
            found = tail.since(after)
            if found is None:
                behind = True
            elif found[0]:
                events, blocks = found
            elif tail.ended:
                return
            else:
                await asyncio.wait((tail.grown,), timeout=max(quiet_until - loop.time(), 0))


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
