"""``/v1/entities``: how often each entity was mentioned, net of retracted mentions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from starlette.responses import Response

from stageline.api.deps import KeyCursor, MinPosition, SettingsDep, StackDep, Workspace, views_at
from stageline.api.responses import json_response
from stageline.api.routing import Router
from stageline.api.schemas import EntityList, EntityView, error_responses
from stageline.errors import NotFound
from stageline.projections.registry import ENTITIES

__all__ = ["router"]

router = Router(prefix="/v1/entities", tags=["entities"])

Label = Annotated[str, Path(min_length=1, max_length=200)]


@router.get(
    "", response_model=None, responses={200: {"model": EntityList}, **error_responses(400, 503)}
)
async def list_entities(
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
    cursor: KeyCursor = None,
    min_position: MinPosition = None,
) -> Response:
    """Entities with at least one standing mention, most mentioned first (then by name,
    then by type), one page at a time; follow `next_cursor` until it is null.

    A page starts just after the last entity of the page before, by its count then: an
    entity whose count changes between two pages may be listed twice, or not at all (the
    pages are not a snapshot). A cursor this server did not give is a 400. Undoing a run
    retracts its mentions, so the counts drop back; pass the `position` an undo answered
    as `min_position` to see that.
    """
    views = await views_at(
        stack, workspace, min_position, settings.read_wait_seconds, projection=ENTITIES.name
    )
    entities, next_cursor = await views.list_entities(workspace, limit=limit, cursor=cursor)
    return json_response({"entities": entities, "next_cursor": next_cursor})


@router.get(
    "/{entity_type}/{name}",
    response_model=None,
    responses={200: {"model": EntityView}, **error_responses(400, 404, 503)},
)
async def get_entity(
    entity_type: Label,
    name: Label,
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    min_position: MinPosition = None,
) -> Response:
    """One entity's mention count, 0 once every mention was retracted; 404 if never mentioned."""
    views = await views_at(
        stack, workspace, min_position, settings.read_wait_seconds, projection=ENTITIES.name
    )
    entity = await views.entity(workspace, entity_type, name)
    if entity is None:
        raise NotFound(
            f"no entity {name!r} of type {entity_type!r}", entity_type=entity_type, name=name
        )
    return json_response(entity)
