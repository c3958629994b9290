"""The FastAPI application: thin routes over the store and the views of one ``Stack``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from stageline import __version__
from stageline.api import (
    dlq,
    entities,
    errors,
    health,
    log,
    metrics,
    ontology,
    operations,
    pipelines,
    projections,
    runs,
    streams,
)
from stageline.api.bodies import finite_numbers
from stageline.api.feed import Feeds
from stageline.api.middleware import BodyLimitMiddleware, CorrelationMiddleware, HeadMiddleware
from stageline.settings import Settings
from stageline.stack import Stack

__all__ = ["create_app"]

DESCRIPTION = """\
Submit pipeline runs, read their status from the run-status view, undo, retry or
cancel them, inspect and redrive dead letters, manage the workspace's named
pipeline configs, append and read events of the log.

* `X-Workspace` selects the workspace (default: the server's); workspaces never see
  each other's data. Every route also takes it as `?workspace=` (for `EventSource`,
  which cannot send headers); if both are sent they must agree (400 otherwise).
* `X-Correlation-ID` is taken from the request or generated, returned on every
  response, and recorded on the events the request writes.
* Every error answer is `{"error": {"code", "message", "details"}, "correlation_id"}`.
* Writes answer with a log `position`; pass it as `min_position` to a read to see the write.
* Nothing is edited or deleted: undo, cancel, retry, redrive, discard and pipeline
  config changes (deletes too) append events.
"""


def create_app(
    stack: Stack | None = None,
    settings: Settings | None = None,
    *,
    stopping: asyncio.Event | None = None,
) -> FastAPI:
    """The API app over ``stack``.

    Without a stack, the app's lifespan opens one from ``settings`` (default: the
    ``STAGELINE_*`` environment) and closes it on shutdown. A given stack is used
    as is and left open: whoever opened it closes it.

    Setting ``stopping`` ends every open live feed (``/v1/log/feed``). Set it before
    asking the server to stop: uvicorn waits for every open answer to end first.
    """
    if settings is None:
        settings = stack.settings if stack is not None else Settings()
    opened_settings = settings
    feeds = Feeds(stopping if stopping is not None else asyncio.Event())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if stack is not None:
            try:
                yield
            finally:
                await app.state.rebuilds.close()
            return
        own = await Stack.open(opened_settings)
        app.state.stack = own
        try:
            yield
        finally:
            await app.state.rebuilds.close()
            app.state.stack = None
            await own.close()

    app = FastAPI(
        title="stageline",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(finite_numbers)],
    )
    app.state.settings = settings
    app.state.stack = stack
    app.state.rebuilds = projections.Rebuilds()
    app.state.feeds = feeds
    errors.install(app)
    # a request is matched against the routes in this order, one after another: the
    # busiest first (runs, appends), the probes' last but for the rarely used
    for module in (
        runs,
        streams,
        operations,
        log,
        pipelines,
        dlq,
        entities,
        ontology,
        projections,
        health,
    ):
        app.include_router(module.router)
    app.state.metrics = metrics.process_registry()
    app.add_api_route("/metrics", metrics.metrics, methods=["GET", "HEAD"], include_in_schema=False)
    # the last added runs first: correlation ids must be set before a body is refused;
    # the route a request matched is known inside the others; no answer to HEAD, the
    # last-resort 500 too, gets past the first with a body
    app.add_middleware(metrics.HttpMetrics, registry=app.state.metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(CorrelationMiddleware, default_workspace=settings.workspace)
    app.add_middleware(HeadMiddleware)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _without_422(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _without_422(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop FastAPI's default 422 entries: invalid requests answer 400 with the envelope."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema
