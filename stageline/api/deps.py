"""What route handlers receive: the stack, the settings, the workspace, consistent views."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import Depends, Header, Query, Request
from pydantic import AfterValidator

from stageline.api.errors import correlation_of
from stageline.api.limits import MAX_POSITION
from stageline.errors import InvalidArgument, Unavailable
from stageline.events.keys import check_stream, check_workspace, run_stream
from stageline.projections import cursors
from stageline.projections.falkordb_views import FalkorDBViews
from stageline.settings import Settings
from stageline.stack import Stack

__all__ = [
    "CorrelationId",
    "IdempotencyKey",
    "KeyCursor",
    "MinPosition",
    "SettingsDep",
    "StackDep",
    "Workspace",
    "check_run_id",
    "views_at",
]


# The dependencies are ``async def`` though they never wait: FastAPI runs a plain
# ``def`` dependency in its thread pool, a thread hop per dependency per request.


async def get_stack(request: Request) -> Stack:
    stack: Stack | None = getattr(request.app.state, "stack", None)
    if stack is None:
        raise Unavailable("the API has no connection to the store yet")
    return stack


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


XWorkspace = Annotated[
    str | None,
    Header(
        alias="X-Workspace",
        description="The workspace to act in; the server's default workspace when absent.",
    ),
]


async def get_workspace(
    request: Request,
    x_workspace: XWorkspace = None,
    workspace: Annotated[
        str | None,
        Query(
            description="The workspace, for clients that cannot set headers (a browser's "
            "EventSource); the same as `X-Workspace`, which, when sent too, must name the "
            "same workspace (400 otherwise).",
        ),
    ] = None,
) -> str:
    """The request's workspace: ``X-Workspace`` or the ``workspace`` query parameter, else
    the configured default; 400 if either is malformed or they name different workspaces."""
    if workspace is None:
        if x_workspace is None:
            settings: Settings = request.app.state.settings
            return settings.workspace
        return check_workspace(x_workspace)
    check_workspace(workspace)
    if x_workspace is not None and check_workspace(x_workspace) != workspace:
        raise InvalidArgument(
            f"X-Workspace names workspace {x_workspace!r} but the workspace query parameter "
            f"names {workspace!r}; send one, or the same in both",
            header=x_workspace,
            query=workspace,
        )
    # the middleware bound the header's workspace (or the default) for the request's logs
    structlog.contextvars.bind_contextvars(workspace=workspace)
    return workspace


async def get_correlation_id(request: Request) -> str:
    """The id the middleware gave this request (echoed in ``X-Correlation-ID``)."""
    return correlation_of(request.scope) or ""


StackDep = Annotated[Stack, Depends(get_stack)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Workspace = Annotated[str, Depends(get_workspace)]
"""The workspace a route acts in, named alike by every route: header or query parameter."""
CorrelationId = Annotated[str, Depends(get_correlation_id)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Makes a retry safe: the same key and body are answered as the first time, "
        "without writing again; the same key with another body is a 409.",
    ),
]


MinPosition = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_POSITION,
        description="Read-your-writes: first wait until the view has applied this log "
        "position (e.g. the `position` a submit returned); 503 if it does not in time.",
    ),
]


def _key_cursor(cursor: str | None) -> str | None:
    if cursor is not None:
        try:
            cursors.decode(cursor)
        except InvalidArgument:
            raise ValueError("invalid cursor") from None
    return cursor


KeyCursor = Annotated[
    str | None,
    AfterValidator(_key_cursor),
    Query(description="`next_cursor` of the previous page, as it is."),
]
"""A list's keyset cursor (``projections.cursors``): a 400 ``invalid cursor`` unless it is
one the server gave, before the route waits for anything."""


async def views_at(
    stack: Stack, workspace: str, min_position: int | None, timeout: float, *, projection: str
) -> FalkorDBViews:
    """The views, once ``projection`` (the one the handler reads) has applied ``min_position``.

    Each projection has its own checkpoint: a read waits only for the view it reads.

    Called from a handler's body, after every parameter was validated, so a bad
    request is refused at once instead of after the wait. Raises ``InvalidArgument``
    for a position past the log's head (it could never be reached) and
    ``Unavailable`` naming the position reached when ``timeout`` ran out.
    """
    views = stack.views
    if not min_position or await views.checkpoint(workspace, projection) >= min_position:
        return views
    head = await stack.store.head(workspace)
    if min_position > head:
        raise InvalidArgument(
            f"min_position {min_position} is past the workspace log's head ({head})",
            min_position=min_position,
            head=head,
        )
    if not await views.wait_for(workspace, min_position, timeout, projection):
        reached = await views.checkpoint(workspace, projection)
        raise Unavailable(
            f"the {projection} view reached position {reached}, not {min_position}, "
            f"within {timeout:g}s; retry later",
            min_position=min_position,
            reached=reached,
            projection=projection,
        )
    return views


def check_run_id(run_id: str) -> str:
    """Reject a run id that could not name a run stream (400)."""
    try:
        check_stream(run_stream(run_id))
    except InvalidArgument:
        raise InvalidArgument(
            "run_id must be 1-196 characters of letters, digits and _.:@=+-", run_id=run_id
        ) from None
    return run_id
