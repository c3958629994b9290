"""``/v1/projections``: each view's checkpoint and lag, and rebuilds started over HTTP.

A rebuild drops one projection's view and replays the log into it, as
``stageline projections rebuild`` does, but in the background of the API
process: the request answers 202 at once and ``GET /v1/projections`` shows its
progress. A projector running meanwhile keeps going; the checkpoint guard lets
each batch land once, whoever writes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from fastapi import Path, Request
from starlette.responses import Response

from stageline.api.deps import StackDep, Workspace
from stageline.api.responses import json_response
from stageline.api.routing import Router
from stageline.api.schemas import ProjectionList, RebuildView, error_responses
from stageline.errors import Conflict, NotFound
from stageline.projections.projector import RebuildResult
from stageline.projections.registry import NAMES

__all__ = ["Rebuild", "Rebuilds", "router"]

log = structlog.get_logger(__name__)

router = Router(prefix="/v1/projections", tags=["projections"])

ProjectionName = Annotated[
    str, Path(min_length=1, max_length=100, description=f"One of: {', '.join(NAMES)}.")
]


@dataclass
class Rebuild:
    """One rebuild this process started, as far as it got."""

    workspace: str
    projection: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    position: int = 0
    head: int | None = None
    finished_at: datetime | None = None
    events: int | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.finished_at is None

    def progressed(self, position: int, head: int) -> None:
        self.position, self.head = position, head

    def ended(self, result: RebuildResult | None, error: str | None = None) -> None:
        self.finished_at = datetime.now(UTC)
        if result is not None:
            self.events = result.events
            self.position = self.head = result.head
        self.error = error

    def view(self) -> dict[str, Any]:
        return {
            "status": "running" if self.running else "failed" if self.error else "finished",
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "position": self.position,
            "head": self.head,
            "events": self.events,
            "error": self.error,
        }


Run = Callable[[str, str, Callable[[int, int], None]], Awaitable[RebuildResult]]


class Rebuilds:
    """The rebuilds this process runs in the background: at most one per view at a time.

    The last one of each workspace's projection is kept to be shown, however it
    ended. ``close()`` cancels those still running; a cancelled rebuild leaves
    its view at the last batch it wrote, which a projector carries on from.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], Rebuild] = {}
        self._tasks: dict[asyncio.Task[None], Rebuild] = {}

    def last(self, workspace: str, projection: str) -> Rebuild | None:
        return self._last.get((workspace, projection))

    def start(self, workspace: str, projection: str, run: Run) -> Rebuild:
        """Start ``run(workspace, projection, progress)``; Conflict if that view is rebuilding."""
        key = (workspace, projection)
        current = self._last.get(key)
        if current is not None and current.running:
            raise Conflict(
                f"{projection} of {workspace!r} is being rebuilt already",
                projection=projection,
                started_at=current.started_at,
            )
        rebuild = self._last[key] = Rebuild(workspace, projection)
        task = asyncio.create_task(self._run(rebuild, run), name=f"rebuild-{projection}")
        self._tasks[task] = rebuild
        task.add_done_callback(self._ended)
        return rebuild

    async def _run(self, rebuild: Rebuild, run: Run) -> None:
        try:
            result = await run(rebuild.workspace, rebuild.projection, rebuild.progressed)
        except Exception as exc:  # kept for GET /v1/projections; the view's projector carries on
            log.exception(
                "projections.rebuild_failed",
                workspace=rebuild.workspace,
                projection=rebuild.projection,
            )
            rebuild.ended(None, f"{type(exc).__name__}: {exc}")
        else:
            rebuild.ended(result)

    def _ended(self, task: asyncio.Task[None]) -> None:
        rebuild = self._tasks.pop(task)
        if task.cancelled():  # before it started, or while it ran
            rebuild.ended(None, "cancelled: the API stopped before the rebuild ended")

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def rebuilds_of(request: Request) -> Rebuilds:
    rebuilds: Rebuilds = request.app.state.rebuilds
    return rebuilds


@router.get(
    "", response_model=None, responses={200: {"model": ProjectionList}, **error_responses(400, 503)}
)
async def list_projections(request: Request, stack: StackDep, workspace: Workspace) -> Response:
    """Each projection's checkpoint, the log's head and the lag between them.

    `rebuild` is the last rebuild this API process started for the projection in
    this workspace (null if none): its status, and how far it got.
    """
    head, stored = await asyncio.gather(
        stack.store.head(workspace), stack.views.checkpoints(workspace, NAMES)
    )
    rebuilds = rebuilds_of(request)
    rows = []
    for name in NAMES:
        checkpoint = stored.get(name, 0)
        rebuild = rebuilds.last(workspace, name)
        rows.append(
            {
                "name": name,
                "checkpoint": checkpoint,
                "lag": max(head - checkpoint, 0),
                "rebuild": rebuild.view() if rebuild is not None else None,
            }
        )
    return json_response({"workspace": workspace, "head": head, "projections": rows})


@router.post(
    "/{projection}/rebuild",
    status_code=202,
    response_model=None,
    responses={202: {"model": RebuildView}, **error_responses(400, 404, 409, 503)},
)
async def rebuild_projection(
    projection: ProjectionName, request: Request, stack: StackDep, workspace: Workspace
) -> Response:
    """Drop the projection's view and replay the log into it, in the background.

    Answers 202 at once; `GET /v1/projections` shows the rebuild's progress.
    Until it ends, reads of that view see it partly rebuilt (a read with
    `min_position` waits for it). 404 for an unknown projection, 409 CONFLICT if
    this process is rebuilding it already.
    """
    if projection not in NAMES:
        raise NotFound(
            f"no projection named {projection!r}; projections: {', '.join(NAMES)}",
            projection=projection,
        )
    projector = stack.projector()

    async def run(ws: str, name: str, progress: Callable[[int, int], None]) -> RebuildResult:
        return await projector.rebuild(ws, name, progress=progress)

    rebuild = rebuilds_of(request).start(workspace, projection, run)
    log.info("projections.rebuild_started", workspace=workspace, projection=projection)
    return json_response({"projection": projection, **rebuild.view()}, 202)
