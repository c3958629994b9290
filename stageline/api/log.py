"""``/v1/log``: the workspace's global log, in position order: by page, or as a live feed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from pydantic import BeforeValidator, StringConstraints
from starlette.responses import Response

from stageline.api.deps import StackDep, Workspace
from stageline.api.feed import HEADERS, PAGE, EventStream, FeedFilter, Feeds
from stageline.api.limits import MAX_POSITION
from stageline.api.responses import json_response
from stageline.api.routing import Router
from stageline.api.schemas import EVENT_TYPE_PATTERN, LogPage, error_responses
from stageline.errors import InvalidArgument

__all__ = ["router"]

router = Router(prefix="/v1/log", tags=["log"])

After = Annotated[
    int, Query(ge=0, le=MAX_POSITION, description="Return events with a position above this.")
]


@router.get(
    "", response_model=None, responses={200: {"model": LogPage}, **error_responses(400, 503)}
)
async def read_log(
    stack: StackDep,
    workspace: Workspace,
    after: After = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most events to return.")] = 100,
) -> Response:
    """Events of every stream of the workspace with position > `after`, oldest first.

    Page on by passing `next_after` as `after`; `head` is the newest position, so
    `next_after == head` means the page reached the end of the log. An `after` past
    the head is a 400: the log never gave that position out.
    """
    events, head = await asyncio.gather(
        stack.store.read_log(workspace, after=after, limit=limit), stack.store.head(workspace)
    )
    if events:  # read after the head, they may be past it
        head = max(head, events[-1].position)
    elif after > head:
        head = await stack.store.head(workspace)  # the log may have reached `after` since
        if after > head:
            raise InvalidArgument(
                f"after {after} is past the workspace log's head ({head})", after=after, head=head
            )
    next_after = events[-1].position if events else after
    return json_response({"events": events, "next_after": next_after, "head": head})


def _digits(value: Any) -> Any:
    # int() would take " 7", "+7" or "7_0": an id the feed sent is digits only
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be the id of an event of the feed: a log position, digits only")
    return value


LastEventId = Annotated[
    int | None,
    BeforeValidator(_digits),
    Header(
        alias="Last-Event-ID",
        ge=0,
        le=MAX_POSITION,
        description="Resume after this position (the `id:` of the last event received); "
        "takes precedence over `after`. EventSource clients send it when they reconnect.",
    ),
]
MAX_TYPES = 50
STREAM_PREFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@=+-]*$"
"""The start of a stream name (see ``keys.check_stream``)."""


async def feed_slot(request: Request, workspace: Workspace) -> AsyncIterator[Feeds]:
    """One of the app's places for an open feed, held until the answer ends (503 if none)."""
    feeds: Feeds = request.app.state.feeds
    with feeds.slot(workspace):
        yield feeds


@router.get(
    "/feed",
    response_class=EventStream,
    responses={
        200: {"description": "A `text/event-stream` of the log's events; see below."},
        **error_responses(400, 503),
    },
)
async def feed(
    request: Request,
    stack: StackDep,
    workspace: Workspace,
    feeds: Annotated[Feeds, Depends(feed_slot)],
    after: After = 0,
    last_event_id: LastEventId = None,
    stream_prefix: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            pattern=STREAM_PREFIX_PATTERN,
            description="Only events of streams named so.",
        ),
    ] = None,
    types: Annotated[
        list[Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)]] | None,
        Query(
            alias="type",
            max_length=MAX_TYPES,
            description="Only events of this type (repeat for several).",
        ),
    ] = None,
) -> Response:
    """The workspace log as Server-Sent Events: every event past `after` (or past
    `Last-Event-ID`), oldest first, then each new one as it is appended, until the
    client disconnects or the server stops.

    Each event is one block: `id:` its log position, `event: log`, `data:` the event
    as `GET /v1/log` returns it. The stream starts with `retry: 1000` and sends
    `: keep-alive` after 15 s without events. Events that `stream_prefix` or `type`
    leave out are skipped, not hidden from resumption: when the last events of a
    read are left out, a block with only their last `id:` follows, so a client that
    reconnects with `Last-Event-ID` does not read them again.

    A browser's `EventSource` cannot send `X-Workspace`: it names the workspace with
    the `workspace` query parameter instead.

    A bad `after`, `Last-Event-ID`, workspace or filter is a 400, and an unreachable
    store a 503, before anything is streamed. `HEAD` makes the same checks and
    answers the same status and headers, without opening a feed.
    """
    start = after if last_event_id is None else last_event_id
    keep = FeedFilter(stream_prefix, frozenset(types or ()))
    first = await stack.store.read_log(workspace, after=start, limit=PAGE)
    if not first and start and start > (head := await stack.store.head(workspace)):
        # a feed from there would send nothing, ever, of the events to come before it
        which = "after" if last_event_id is None else "Last-Event-ID"
        raise InvalidArgument(
            f"{which} {start} is past the workspace log's head ({head})",
            **{which: start},
            head=head,
        )
    if request.method == "HEAD":  # the GET's status and headers, without opening a feed
        return EventStream(_nothing(), headers=HEADERS)
    return EventStream(feeds.follow(stack.store, workspace, first, start, keep), headers=HEADERS)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing
