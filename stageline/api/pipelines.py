"""``/v1/pipelines``: a workspace's named pipeline configs, each version an event.

Single configs are read from their own stream (always current, every version);
the list comes from the pipeline-configs view (pass a write's `position` as
`min_position` to see it there). Built-ins are listed in every workspace and
are read-only.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import Header, Path, Query, Request
from starlette.responses import Response

from stageline.actors.configs import ConfigVersion
from stageline.actors.pipeline import NAME_PATTERN, Pipeline
from stageline.actors.pipelines_store import PipelineWrite
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
from stageline.api.schemas import (
    PipelineCreate,
    PipelineList,
    PipelineUpdate,
    PipelineView,
    PipelineWritten,
    StageIn,
    error_responses,
)
from stageline.errors import InvalidArgument
from stageline.projections.registry import PIPELINES

__all__ = ["router"]

router = Router(prefix="/v1/pipelines", tags=["pipelines"])

PipelineName = Annotated[
    str, Path(pattern=NAME_PATTERN, description="The pipeline's name.", examples=["memory-ingest"])
]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Only write if the config is at this version (its ETag, e.g. `"3"`); '
        "409 CONFLICT otherwise. `*`: any version.",
    ),
]


@router.get(
    "", response_model=None, responses={200: {"model": PipelineList}, **error_responses(400, 503)}
)
async def list_pipelines(
    stack: StackDep, settings: SettingsDep, workspace: Workspace, min_position: MinPosition = None
) -> Response:
    """The built-ins, then the workspace's own configs by name, each at its latest version."""
    views = await views_at(
        stack, workspace, min_position, settings.read_wait_seconds, projection=PIPELINES.name
    )
    builtins = [
        {
            "name": p.name,
            "version": p.version,
            "description": p.description,
            "builtin": True,
            "stages": p.stage_names,
            "updated_at": None,
        }
        for p in stack.catalog.builtins()
    ]
    own = [
        {
            "name": row["name"],
            "version": row["version"],
            "description": row["description"] or "",
            "builtin": False,
            "stages": row["stages"] or [],
            "updated_at": row["updated_at"],
        }
        for row in await views.pipelines(workspace)
    ]
    return json_response({"pipelines": builtins + own})


@router.post(
    "",
    status_code=201,
    response_model=None,
    responses={201: {"model": PipelineWritten}, **error_responses(400, 409, 413, 503)},
)
async def create_pipeline(
    body: PipelineCreate,
    request: Request,
    stack: StackDep,
    workspace: Workspace,
    correlation_id: CorrelationId,
) -> Response:
    """Create a config at version 1 (after a delete: at its next version).

    Validated before anything is written (400): the name, 1-100 stages with
    unique names, registered actors, timeouts > 0, retry policies with
    `max_retries >= 0`, `backoff_seconds >= 0`, `backoff_multiplier >= 1` and a
    fallback that is `skip` or a later stage. 409 CONFLICT if a config or a
    built-in has the name.
    """
    pipeline = _pipeline(body.name, body.description, body.stages)
    written = await stack.pipelines.create(workspace, pipeline, correlation_id=correlation_id)
    location = str(request.app.url_path_for("get_pipeline", name=written.name))
    return _written(written, 201, {"Location": location})


@router.get(
    "/{name}",
    response_model=None,
    responses={200: {"model": PipelineView}, **error_responses(400, 404, 503)},
)
async def get_pipeline(
    name: PipelineName,
    stack: StackDep,
    workspace: Workspace,
    version: Annotated[
        int | None,
        Query(
            ge=1,
            description="An older version (default: the latest). Stays readable "
            "after the config is deleted, for the runs that use it.",
        ),
    ] = None,
) -> Response:
    """One version of a pipeline, straight from the log; its `ETag` is the version.

    404 if there is no such config (a deleted one, unless `version` is given)
    or no such version.
    """
    if stack.catalog.is_builtin(name):
        pipeline = stack.catalog.get(workspace, name, version)
        view = _view(pipeline, builtin=True, latest=stack.catalog.get(workspace, name).version)
        return json_response(view, headers=_etag(pipeline.version))
    found, state = await stack.pipelines.show(workspace, name, version)
    latest = state.latest.pipeline.version if state.latest is not None else found.pipeline.version
    view = _view(found.pipeline, latest=latest, deleted=state.deleted, at=found)
    return json_response(view, headers=_etag(found.pipeline.version))


@router.put(
    "/{name}",
    response_model=None,
    responses={200: {"model": PipelineWritten}, **error_responses(400, 404, 409, 413, 503)},
)
async def update_pipeline(
    name: PipelineName,
    body: PipelineUpdate,
    stack: StackDep,
    workspace: Workspace,
    correlation_id: CorrelationId,
    if_match: IfMatch = None,
) -> Response:
    """Record the next version of an existing config (the whole definition, validated as
    on create).

    New runs use the new version; runs already going keep the version they
    started with. A definition equal to the current one writes nothing
    (`changed: false`). 404 if the config does not exist, 409 CONFLICT for a
    built-in or when `If-Match` names another version.
    """
    if body.name is not None and body.name != name:
        raise InvalidArgument(
            f"the body's name {body.name!r} is not the path's {name!r}", field="name"
        )
    pipeline = _pipeline(name, body.description, body.stages)
    written = await stack.pipelines.update(
        workspace, pipeline, expected_version=_version(if_match), correlation_id=correlation_id
    )
    return _written(written, 200)


@router.delete(
    "/{name}",
    response_model=None,
    responses={200: {"model": PipelineWritten}, **error_responses(400, 404, 409, 503)},
)
async def delete_pipeline(
    name: PipelineName,
    stack: StackDep,
    workspace: Workspace,
    correlation_id: CorrelationId,
    if_match: IfMatch = None,
    reason: Annotated[
        str, Query(max_length=500, description="Why; recorded on `PipelineDeleted`.")
    ] = "",
) -> Response:
    """Delete a config: recorded as `PipelineDeleted`, nothing is erased.

    New runs naming it are 404; runs already using it finish with their
    version, which `GET /v1/pipelines/{name}?version=` still shows. The name
    can be created again (at the next version). 404 if there is no such
    config, 409 CONFLICT for a built-in or when `If-Match` names another version.
    """
    written = await stack.pipelines.delete(
        workspace,
        name,
        expected_version=_version(if_match),
        reason=reason,
        correlation_id=correlation_id,
    )
    return _written(written, 200)


def _pipeline(name: str, description: str, stages: list[StageIn]) -> Pipeline:
    data = {"name": name, "description": description, "stages": [s.model_dump() for s in stages]}
    return msgspec.convert(data, Pipeline)


def _version(if_match: str | None) -> int | None:
    """The version an ``If-Match`` header names; None for none or ``*``."""
    if if_match is None or if_match.strip() == "*":
        return None
    text = if_match.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not text.isdigit() or not text.isascii():
        raise InvalidArgument(
            'If-Match must be a version such as "3" (the ETag of GET /v1/pipelines/{name}) or *',
            if_match=if_match,
        )
    return int(text)


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def _view(
    pipeline: Pipeline,
    *,
    latest: int,
    builtin: bool = False,
    deleted: bool = False,
    at: ConfigVersion | None = None,
) -> dict[str, Any]:
    return {
        **msgspec.to_builtins(pipeline),
        "builtin": builtin,
        "defined_at": at.defined_at if at is not None else None,
        "latest_version": latest,
        "deleted": deleted,
    }


def _written(
    written: PipelineWrite, status: int, headers: dict[str, str] | None = None
) -> Response:
    return json_response(written, status, {**_etag(written.version), **(headers or {})})
