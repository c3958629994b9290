"""JSON responses encoded with msgspec, and the one page shape every stream read returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from fastapi import Query
from starlette.responses import Response

from stageline.api.limits import MAX_POSITION
from stageline.errors import NotFound
from stageline.events.store import EventStore

__all__ = ["JSON", "Backwards", "FromVersion", "PageLimit", "json_response", "stream_page"]

JSON = msgspec.json.Encoder()
"""How every JSON answer is encoded (``json_response``; each event of the live feed too)."""

FromVersion = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_POSITION,
        description="First version to read (default: the start, or the end if backwards).",
    ),
]
PageLimit = Annotated[int, Query(ge=1, le=1000, description="Most events to return.")]
Backwards = Annotated[bool, Query(description="Read from newest to oldest.")]


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``content`` (dicts, lists, msgspec structs, datetimes, UUIDs) as a JSON response."""
    return Response(
        content=JSON.encode(content),
        status_code=status_code,
        media_type="application/json",
        headers=dict(headers) if headers else None,
    )


async def stream_page(
    store: EventStore,
    workspace: str,
    stream: str,
    *,
    from_version: int | None,
    limit: int,
    backwards: bool,
) -> Response:
    """One page of a stream's events, or ``NotFound`` when the stream does not exist."""
    version = await store.stream_version(workspace, stream)
    if version < 0:
        raise NotFound(f"no stream {stream!r} in workspace {workspace!r}", stream=stream)
    events = await store.read_stream(
        workspace, stream, from_version=from_version, backwards=backwards, limit=limit
    )
    if events:  # appended between the two reads: report what the page shows
        version = max(version, events[0].version, events[-1].version)
    next_from: int | None = None
    if len(events) == limit:
        after = events[-1].version + (-1 if backwards else 1)
        if 0 <= after <= version:
            next_from = after
    return json_response(
        {"stream": stream, "version": version, "events": events, "next_from_version": next_from}
    )
