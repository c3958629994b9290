"""``/v1/dlq``: list dead letters, redrive or discard them; closing one is an event, never a drop.

A dead letter is either a run whose stage gave up (kind `run`: its entry lives in
the run's stream) or a command no worker could handle (kind `poison`: on the
workspace's `dead-letters` stream). Lists come from the dead-letter view.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query
from starlette.responses import Response

from stageline.api.deps import (
    CorrelationId,
    MinPosition,
    SettingsDep,
    StackDep,
    Workspace,
    views_at,
)
from stageline.api.responses import json_response
from stageline.api.routing import Router
from stageline.api.schemas import DeadLetterClosed, DeadLetterList, DeadLetterView, error_responses
from stageline.errors import Conflict, NotFound
from stageline.projections.registry import RUN_STATUS
from stageline.settings import Settings
from stageline.stack import Stack

__all__ = ["router"]

router = Router(prefix="/v1/dlq", tags=["dead letters"])

DeadLetterId = Annotated[
    str, Path(min_length=1, max_length=200, description="The dead letter's `id`.")
]
Reason = Annotated[str, Query(max_length=500, description="Why; recorded on the closing event.")]


@router.get(
    "",
    response_model=None,
    responses={200: {"model": DeadLetterList}, **error_responses(400, 503)},
)
async def list_dead_letters(
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    stage: Annotated[
        str | None, Query(min_length=1, max_length=100, description="Only this stage's entries.")
    ] = None,
    status: Annotated[
        Literal["open", "redriven", "discarded", "all"],
        Query(description="Only entries with this status (`all`: every entry)."),
    ] = "open",
    channel: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=100,
            description="Only the poison entries of this channel, named by its actor as their "
            "`actor` names it (`@ingest`: the ingest channel).",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,19}$", description="`next_cursor` of the previous page."),
    ] = None,
    min_position: MinPosition = None,
) -> Response:
    """Dead letters of the workspace, by default the open ones that wait for a decision,
    newest first, one page at a time; follow `next_cursor` until it is null."""
    views = await views_at(
        stack, workspace, min_position, settings.read_wait_seconds, projection=RUN_STATUS.name
    )
    rows, next_cursor = await views.list_dead_letters(
        workspace,
        stage=stage,
        status=None if status == "all" else status,
        actor=channel,
        limit=limit,
        cursor=cursor,
    )
    return json_response({"dead_letters": rows, "next_cursor": next_cursor})


@router.get(
    "/{dead_letter}",
    response_model=None,
    responses={200: {"model": DeadLetterView}, **error_responses(400, 404, 503)},
)
async def get_dead_letter(
    dead_letter: DeadLetterId,
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    min_position: MinPosition = None,
) -> Response:
    """One dead letter, whatever its status (404 if the view has none with this id)."""
    views = await views_at(
        stack, workspace, min_position, settings.read_wait_seconds, projection=RUN_STATUS.name
    )
    row = await views.get_dead_letter(workspace, dead_letter)
    if row is None:
        raise NotFound(f"no dead letter {dead_letter!r}", dead_letter=dead_letter)
    return json_response(row)


@router.post(
    "/{dead_letter}/redrive",
    status_code=202,
    response_model=None,
    responses={202: {"model": DeadLetterClosed}, **error_responses(400, 404, 409, 503)},
)
async def redrive_dead_letter(
    dead_letter: DeadLetterId,
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    correlation_id: CorrelationId,
) -> Response:
    """Send an open dead letter back to work and close it as `redriven`; answers 202 at once.

    A run (kind `run`) is retried from the stage that gave up, with the next attempt
    number, like `POST /v1/runs/{run_id}/retry`. A poison command goes back on its
    actor's channel as it was. 404 if there is no such entry, 409 CONFLICT if it
    is not open, or cannot go back as it is (e.g. its actor is not one registered
    here, or its command is of another workspace).
    """
    row = await _open_entry(stack, settings, workspace, dead_letter)
    if row["kind"] == "run":
        retried = await stack.operations.retry(
            workspace, row["run_id"], correlation_id=correlation_id
        )
        position = retried.position
    else:
        position = await stack.dead_letters.redrive(
            workspace, dead_letter, correlation_id=correlation_id
        )
    return json_response(_closed(row, "redriven", position), 202)


@router.delete(
    "/{dead_letter}",
    response_model=None,
    responses={200: {"model": DeadLetterClosed}, **error_responses(400, 404, 409, 503)},
)
async def discard_dead_letter(
    dead_letter: DeadLetterId,
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    correlation_id: CorrelationId,
    reason: Reason = "",
) -> Response:
    """Close an open dead letter without redriving it, as `discarded`.

    Recorded as a `DeadLetterDiscarded` event on the entry's stream (a run's own
    history shows it); nothing is deleted. A discarded run stays failed. 404 if
    there is no such entry, 409 CONFLICT if it is not open.
    """
    row = await _open_entry(stack, settings, workspace, dead_letter)
    position = await stack.dead_letters.discard(
        workspace, row["stream"], dead_letter, reason, correlation_id=correlation_id
    )
    return json_response(_closed(row, "discarded", position))


async def _open_entry(
    stack: Stack, settings: Settings, workspace: str, dead_letter: str
) -> dict[str, Any]:
    """The entry as of this request: the view first catches up with the log's current head.

    A dead letter written just before the request is found, and one closed just
    before it is seen closed; 503 if the view does not catch up in time.
    """
    head = await stack.store.head(workspace)
    views = await views_at(
        stack, workspace, head, settings.read_wait_seconds, projection=RUN_STATUS.name
    )
    row = await views.get_dead_letter(workspace, dead_letter)
    if row is None:
        raise NotFound(f"no dead letter {dead_letter!r}", dead_letter=dead_letter)
    if row["status"] != "open":
        raise Conflict(
            f"dead letter {dead_letter!r} is already {row['status']}",
            dead_letter=dead_letter,
            status=row["status"],
        )
    return row


def _closed(row: dict[str, Any], status: str, position: int) -> dict[str, Any]:
    return {
        "dead_letter": row["id"],
        "kind": row["kind"],
        "run_id": row.get("run_id"),
        "status": status,
        "position": position,
    }
