"""``/v1/runs``: submit a run, read it, list runs, run stats, a run's event history."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import Query, Request
from starlette.responses import Response

from stageline.api.deps import (
    CorrelationId,
    IdempotencyKey,
    MinPosition,
    SettingsDep,
    StackDep,
    Workspace,
    check_run_id,
    views_at,
)
from stageline.api.errors import CANCELLED_STATE
from stageline.api.responses import Backwards, FromVersion, PageLimit, json_response, stream_page
from stageline.api.routing import Router
from stageline.api.schemas import (
    RunList,
    RunStats,
    RunView,
    StreamEvents,
    SubmitAccepted,
    SubmitRun,
    error_responses,
)
from stageline.errors import InvalidArgument, NotFound
from stageline.events.keys import run_stream
from stageline.projections.falkordb_views import FalkorDBViews
from stageline.projections.registry import RUN_STATUS
from stageline.projections.run_status import RUN_ENDINGS, RunStatus

__all__ = ["router"]

router = Router(prefix="/v1/runs", tags=["runs"])

"""Statuses that end a run; ``wait`` returns as soon as the view shows one."""
POLL_SECONDS = 0.02


async def until_ended(
    views: FalkorDBViews, workspace: str, run_id: str, position: int, timeout: float
) -> dict[str, Any] | None:
    """The run once the view shows it ended, or as far as it got when ``timeout`` ran out."""
    deadline = time.monotonic() + timeout
    if not await views.wait_for(workspace, position, timeout, projection=RUN_STATUS.name):
        return await views.get_run(workspace, run_id)
    while True:
        run = await views.get_run(workspace, run_id)
        left = deadline - time.monotonic()
        if (run is not None and run["status"] in RUN_ENDINGS) or left <= 0:
            return run
        await asyncio.sleep(min(POLL_SECONDS, left))


@router.post(
    "",
    status_code=202,
    response_model=None,
    responses={
        202: {"model": SubmitAccepted, "description": "Accepted: the run is on its way."},
        200: {"model": RunView, "description": "With `wait`: the run ended in time."},
        **error_responses(400, 404, 409, 413, 503),
    },
)
async def submit_run(
    body: SubmitRun,
    request: Request,
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    correlation_id: CorrelationId,
    idempotency_key: IdempotencyKey = None,
    wait: Annotated[
        float | None,
        Query(gt=0, le=60, description="Seconds to wait for the run to end (sync mode)."),
    ] = None,
) -> Response:
    """Start a run of `pipeline` on `input` and answer 202 with where to follow it.

    `pipeline` is a built-in or one of the workspace's configs; the run uses its
    latest version (recorded as `pipeline_version`) to the end, whatever
    happens to the config meanwhile.

    `position` is the log position of the run's first event: pass it as
    `min_position` to a read to be sure the read sees the run. With `wait`, the
    answer is 200 with the finished run if it ends within `wait` seconds, else
    202 with the run as far as it got (also, with `run` null, if the server stops
    meanwhile). Nothing is written for a request answered with an error.
    """
    text = body.input.text
    if len(text) > settings.max_text_chars:
        raise InvalidArgument(
            f"input.text has {len(text)} characters, more than the limit of "
            f"{settings.max_text_chars}",
            field="input.text",
            max_chars=settings.max_text_chars,
        )
    item = body.input.model_dump(mode="json", exclude_none=True)
    try:
        result = await stack.submitter.submit(
            workspace,
            body.pipeline,
            item,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )
    except NotFound as exc:
        if exc.details.get("pipeline") != body.pipeline:
            raise
        own = [row["name"] for row in await stack.views.pipelines(workspace)]
        known = sorted({*stack.catalog.names(workspace), *own})
        raise NotFound(
            f"no pipeline named {body.pipeline!r}; known pipelines: {', '.join(known)}",
            pipeline=body.pipeline,
            known=known,
        ) from None
    status_url = request.scope.get("root_path", "") + str(
        request.app.url_path_for("get_run", run_id=result.run_id)
    )
    accepted = {
        "run_id": result.run_id,
        "stream": result.stream,
        "position": result.position,
        "deduplicated": result.deduplicated,
        "status_url": status_url,
    }
    location = {"Location": status_url}
    if wait is None:
        return json_response(accepted, 202, location)
    # recorded: a wait the stopping server cuts off answers as one that ran out, not 503
    request.scope["state"][CANCELLED_STATE] = json_response(
        {**accepted, "run": None}, 202, location
    )
    run = await until_ended(stack.views, workspace, result.run_id, result.position, wait)
    if run is not None and run["status"] in RUN_ENDINGS:
        return json_response(run)
    return json_response({**accepted, "run": run}, 202, location)


PipelineFilter = Annotated[
    str | None, Query(min_length=1, max_length=100, description="Only runs of this pipeline.")
]


@router.get(
    "", response_model=None, responses={200: {"model": RunList}, **error_responses(400, 503)}
)
async def list_runs(
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    status: Annotated[RunStatus | None, Query(description="Only runs with this status.")] = None,
    pipeline: PipelineFilter = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,19}$", description="`next_cursor` of the previous page."),
    ] = None,
    min_position: MinPosition = None,
) -> Response:
    """Runs newest first, one page at a time; follow `next_cursor` until it is null."""
    views = await views_at(
        stack, workspace, min_position, settings.read_wait_seconds, projection=RUN_STATUS.name
    )
    runs, next_cursor = await views.list_runs(
        workspace,
        status=status.value if status is not None else None,
        pipeline=pipeline,
        limit=limit,
        cursor=cursor,
    )
    return json_response({"runs": runs, "next_cursor": next_cursor})


# declared before /{run_id}, which would otherwise take "stats" for a run id
@router.get(
    "/stats", response_model=None, responses={200: {"model": RunStats}, **error_responses(400, 503)}
)
async def run_stats(
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    pipeline: PipelineFilter = None,
    min_position: MinPosition = None,
) -> Response:
    """Run counts by status, their total, and per stage the p50/p95 of completed durations
    (stages of different pipelines that share a name together, unless `pipeline` is given)."""
    views = await views_at(
        stack, workspace, min_position, settings.read_wait_seconds, projection=RUN_STATUS.name
    )
    return json_response(await views.stats(workspace, pipeline))


@router.get(
    "/{run_id}",
    response_model=None,
    responses={200: {"model": RunView}, **error_responses(400, 404, 503)},
)
async def get_run(
    run_id: str,
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    min_position: MinPosition = None,
) -> Response:
    """One run with its stages, as the run-status view holds it (404 if it has none)."""
    check_run_id(run_id)
    views = await views_at(
        stack, workspace, min_position, settings.read_wait_seconds, projection=RUN_STATUS.name
    )
    run = await views.get_run(workspace, run_id)
    if run is not None:
        return json_response(run)
    stream = run_stream(run_id)
    last = await stack.store.read_stream(workspace, stream, backwards=True, limit=1)
    if not last:
        raise NotFound(f"no run {run_id!r} in workspace {workspace!r}", run_id=run_id)
    position = last[0].position
    if await views.checkpoint(workspace, RUN_STATUS.name) < position:
        raise NotFound(
            f"run {run_id!r} is in the log but not in the view yet; pass "
            f"min_position={position} to wait for it",
            run_id=run_id,
            in_log=True,
            position=position,
        )
    run = await views.get_run(workspace, run_id)  # the view may have applied them just now
    if run is not None:
        return json_response(run)
    # the view applied every event of the stream, and none made it a run
    raise NotFound(
        f"{stream!r} is in the log but is not a run: it has no RunSubmitted "
        f"(its events, to position {position}: GET /v1/runs/{run_id}/events)",
        run_id=run_id,
        in_log=True,
        run=False,
        position=position,
    )


@router.get(
    "/{run_id}/events",
    response_model=None,
    responses={200: {"model": StreamEvents}, **error_responses(400, 404, 503)},
)
async def run_events(
    run_id: str,
    stack: StackDep,
    workspace: Workspace,
    from_version: FromVersion = None,
    limit: PageLimit = 100,
    backwards: Backwards = False,
) -> Response:
    """The run's events straight from the log (not the view), in stream order."""
    check_run_id(run_id)
    return await stream_page(
        stack.store,
        workspace,
        run_stream(run_id),
        from_version=from_version,
        limit=limit,
        backwards=backwards,
    )
