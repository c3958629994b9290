"""``/v1/log``: the workspace's global log, in position order, one page at a time."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from stageline.api.deps import StackDep, Workspace
from stageline.api.limits import MAX_POSITION
from stageline.api.responses import json_response
from stageline.api.schemas import LogPage, error_responses

__all__ = ["router"]

router = APIRouter(prefix="/v1/log", tags=["log"])


@router.get(
    "", response_model=None, responses={200: {"model": LogPage}, **error_responses(400, 503)}
)
async def read_log(
    stack: StackDep,
    workspace: Workspace,
    after: Annotated[
        int, Query(ge=0, le=MAX_POSITION, description="Return events with a position above this.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most events to return.")] = 100,
) -> Response:
    """Events of every stream of the workspace with position > `after`, oldest first.

    Page on by passing `next_after` as `after`; `head` is the newest position, so
    `next_after == head` means the page reached the end of the log.
    """
    events, head = await asyncio.gather(
        stack.store.read_log(workspace, after=after, limit=limit), stack.store.head(workspace)
    )
    next_after = events[-1].position if events else after
    return json_response(
        {"events": events, "next_after": next_after, "head": max(head, next_after)}
    )
