"""``/v1/ontology``: a workspace's entity patterns and types, their statistics and documents.

Writes (add, remove, import) append to the workspace's ontology stream, or to
the global workspace's for a global pattern. The pattern list and the status
come from the `patterns` and `ontology` views (pass a write's `position` as
`min_position` to see it there); the export is read from the stream, always
current.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Set
from typing import Annotated, Any

from fastapi import Body, Path, Query
from starlette.responses import Response

from stageline.api.deps import (
    CorrelationId,
    KeyCursor,
    MinPosition,
    SettingsDep,
    StackDep,
    Workspace,
    views_at,
)
from stageline.api.limits import MAX_POSITION
from stageline.api.responses import json_response
from stageline.api.routing import Router
from stageline.api.schemas import (
    OntologyDocument,
    OntologyImported,
    OntologyStatus,
    PatternCreate,
    PatternList,
    PatternSourceName,
    PatternWritten,
    error_responses,
)
from stageline.errors import InvalidArgument
from stageline.events.keys import GLOBAL_WORKSPACE
from stageline.ontology.model import TYPE_NAME_PATTERN
from stageline.ontology.store import OntologyWrite
from stageline.projections import cursors
from stageline.projections.falkordb_views import FalkorDBViews
from stageline.stack import Stack

__all__ = ["merge_patterns", "router"]

router = Router(prefix="/v1/ontology", tags=["ontology"])

PATTERNS = "patterns"
"""The pattern-stats projection."""
ONTOLOGY = "ontology"
"""The convergence projection (types, counters, the discovery curve)."""

_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_STATS = ("matches", "runs_matched", "first_seen", "last_seen")
_NO_STATS: dict[str, Any] = {"matches": 0, "runs_matched": 0, "first_seen": None, "last_seen": None}

PatternId = Annotated[
    str,
    Path(
        pattern=_UUID,
        description="The pattern's id (as listed by `GET /v1/ontology/patterns`).",
        examples=["0f8e7f0c-3a64-5f5e-9d42-6a1b2c3d4e5f"],
    ),
]
MinGlobalPosition = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_POSITION,
        description="Read-your-writes for global patterns: first wait until the view has "
        "applied this position of the global patterns' log (the `position` of a write "
        "that answered `workspace: _global`); 503 if it does not in time.",
    ),
]


async def _views_at(
    stack: Stack,
    workspace: str,
    min_position: int | None,
    timeout: float,
    *projections: str,
) -> FalkorDBViews:
    """The views once each of ``projections`` has applied ``min_position`` of ``workspace``."""
    views = stack.views
    for projection in projections:
        views = await views_at(stack, workspace, min_position, timeout, projection=projection)
    return views


@router.get(
    "/patterns",
    response_model=None,
    responses={200: {"model": PatternList}, **error_responses(400, 503)},
)
async def list_patterns(
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    source: Annotated[
        PatternSourceName | None, Query(description="Only patterns of this source.")
    ] = None,
    entity_type: Annotated[
        str | None, Query(pattern=TYPE_NAME_PATTERN, description="Only patterns of this type.")
    ] = None,
    include_removed: Annotated[
        bool, Query(description="Also list removed patterns (`active: false`).")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
    cursor: KeyCursor = None,
    min_position: MinPosition = None,
    min_global_position: MinGlobalPosition = None,
) -> Response:
    """The workspace's patterns and the global ones (`is_global: true`), most matched first
    (then by name, then by id), one page at a time; follow `next_cursor` until it is null.

    A workspace pattern with a global pattern's id overrides it, and a global
    pattern removed in the workspace is not listed there. Match statistics are
    the workspace's own. `stats_by_source` counts the workspace's own active
    patterns by source. A page starts just after the last pattern of the page before,
    by its matches then: a pattern matched between two pages may be listed twice, or
    not at all (the pages are not a snapshot). A cursor this server did not give is a 400.
    """
    timeout = settings.read_wait_seconds
    views = await _views_at(stack, workspace, min_position, timeout, PATTERNS)
    if min_global_position:
        try:
            await _views_at(stack, GLOBAL_WORKSPACE, min_global_position, timeout, PATTERNS)
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"min_global_position {min_global_position} is past the global patterns' log head",
                **{**exc.details, "min_global_position": min_global_position},
            ) from None
    after = cursors.decode(cursor) if cursor is not None else None
    filters: dict[str, Any] = {
        "source": source,
        "entity_type": entity_type,
        "include_removed": include_removed,
    }
    # A global pattern sorts by the matches of the workspace's node of it, not by anything
    # the global graph holds, so neither a cursor nor a limit can cut the global patterns
    # (or those nodes) where they are read: they are read whole, the workspace's own
    # patterns from the cursor on and one more than a page, and the page is cut once merged.
    own_rows, local_rows, global_rows, counts, own = await asyncio.gather(
        views.patterns(workspace, **filters, is_global=False, after=after, limit=limit + 1),
        views.patterns(workspace, **filters, is_global=True, limit=None),
        views.patterns(GLOBAL_WORKSPACE, **filters, limit=None),
        views.pattern_counts(workspace),
        stack.ontology.current(workspace, seed=False),
    )
    # ids the workspace holds a pattern of (an override too) or removed a global one of
    owned = own.patterns.keys() | own.hidden
    patterns, last = merge_patterns([*own_rows, *local_rows], global_rows, owned, limit, after)
    next_cursor = cursors.encode(last) if last is not None else None
    return json_response(
        {"patterns": patterns, "stats_by_source": counts, "next_cursor": next_cursor}
    )


@router.post(
    "/patterns",
    status_code=201,
    response_model=None,
    responses={201: {"model": PatternWritten}, **error_responses(400, 409, 413, 503)},
)
async def add_pattern(
    body: PatternCreate, stack: StackDep, workspace: Workspace, correlation_id: CorrelationId
) -> Response:
    """Add a pattern by hand (source `manual`), or override the one with the same name
    (any case) and type: its confidence and source become these.

    A type the ontology lacks, or has rejected, is added as `confirmed`. With
    `is_global` the pattern goes to the global patterns, which every workspace
    matches; the answer's `workspace` is then `_global`. 400 (nothing written)
    for a bad name, type or confidence.
    """
    written = await stack.ontology.add_pattern(
        workspace,
        body.name,
        body.entity_type,
        confidence=body.confidence,
        is_global=body.is_global,
        correlation_id=correlation_id,
    )
    return _written(written, 201)


@router.delete(
    "/patterns/{pattern_id}",
    response_model=None,
    responses={200: {"model": PatternWritten}, **error_responses(400, 404, 409, 503)},
)
async def remove_pattern(
    pattern_id: PatternId,
    stack: StackDep,
    workspace: Workspace,
    correlation_id: CorrelationId,
    is_global: Annotated[
        bool,
        Query(
            alias="global",
            description="Remove a global pattern for every workspace. Without it, removing "
            "a global pattern hides it from this workspace only.",
        ),
    ] = False,
) -> Response:
    """Remove a pattern (recorded as `PatternRemoved`): it matches no more, and discovery
    never proposes it again. 404 if there is no such active pattern.
    """
    written = await stack.ontology.remove_pattern(
        workspace, pattern_id, is_global=is_global, correlation_id=correlation_id
    )
    return _written(written, 200)


@router.get(
    "/status",
    response_model=None,
    responses={200: {"model": OntologyStatus}, **error_responses(400, 503)},
)
async def ontology_status(
    stack: StackDep,
    settings: SettingsDep,
    workspace: Workspace,
    bucket_runs: Annotated[
        int,
        Query(
            ge=10,
            le=100_000,
            multiple_of=10,
            description="Runs per bucket of the discovery curve: a multiple of 10.",
        ),
    ] = 100,
    min_position: MinPosition = None,
) -> Response:
    """How far the workspace's ontology has converged: patterns by source, types by
    status, totals, promotion/confirmation/rejection rates, the share of mentions resolved
    by established patterns, and the discovery curve (new patterns and types per bucket
    of runs), which flattens as the ontology converges. Global patterns are not counted.
    """
    views = await _views_at(
        stack, workspace, min_position, settings.read_wait_seconds, PATTERNS, ONTOLOGY
    )
    return json_response(await views.ontology_status(workspace, bucket_runs=bucket_runs))


@router.get(
    "/export",
    response_model=None,
    responses={200: {"model": OntologyDocument}, **error_responses(400, 503)},
)
async def export_ontology(stack: StackDep, workspace: Workspace) -> Response:
    """The workspace's ontology as a versioned document, read from its stream (always current).

    Every type, then every active pattern of the workspace, sorted; global
    patterns are not included. `POST /v1/ontology/import` takes it back.
    """
    return json_response(await stack.ontology.export(workspace))


@router.post(
    "/import",
    response_model=None,
    responses={200: {"model": OntologyImported}, **error_responses(400, 409, 413, 503)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/OntologyDocument"}}
            },
        }
    },
)
async def import_ontology(
    document: Annotated[dict[str, Any], Body()],
    stack: StackDep,
    workspace: Workspace,
    correlation_id: CorrelationId,
) -> Response:
    """Replace the workspace's ontology, whole, with a document (as `export` writes it), in
    one `OntologyImported` event.

    Checked whole first: 400, with nothing written, naming the first problem
    (a wrong `format` or `version`, an unknown field, a bad or repeated name, a
    pattern of a type the document lacks or rejected, a confidence outside 0..1).
    Patterns not in the document are no longer active afterwards.
    """
    written = await stack.ontology.import_document(
        workspace, document, correlation_id=correlation_id
    )
    return json_response({"workspace": written.workspace, "position": written.position})


def merge_patterns(
    own_rows: Iterable[dict[str, Any]],
    global_rows: Iterable[dict[str, Any]],
    owned: Set[str],
    limit: int,
    after: cursors.Key | None = None,
) -> tuple[list[dict[str, Any]], cursors.Key | None]:
    """The page a workspace lists: of its own patterns and the global ones it neither
    overrides nor hides (``owned``), most matched first, then by name, then by id, the
    first ``limit`` after the key ``after`` (from the first if None); and the key of the
    page's last row if more rows follow it (None at the end).

    A global pattern matched in the workspace has a node of its own there (marked
    ``is_global``) that holds the workspace's match statistics: the global row takes them.
    ``own_rows`` holds every such node, and at least the first ``limit + 1`` of the
    workspace's own patterns after ``after``; ``global_rows`` every global pattern.
    """
    own_rows = list(own_rows)
    patterns = [r for r in own_rows if r["id"] in owned or not r["is_global"]]
    local = {r["id"]: r for r in own_rows if r["id"] not in owned and r["is_global"]}
    for row in global_rows:
        if row["id"] in owned:
            continue
        stats = local.get(row["id"])
        local_stats = {k: stats[k] for k in _STATS} if stats is not None else _NO_STATS
        patterns.append({**row, **local_stats, "is_global": True})
    patterns.sort(key=_order)
    if after is not None:
        matches, name, pid = after
        patterns = [r for r in patterns if _order(r) > (-matches, name, pid)]
    page = patterns[:limit]
    if len(patterns) <= limit:
        return page, None
    last = page[-1]
    return page, (last["matches"] or 0, last["name"], last["id"])


def _order(row: Mapping[str, Any]) -> tuple[int, str, str]:
    """Most matched first, then by name, then by id: the order of the Cypher reads too."""
    return (-(row["matches"] or 0), row["name"], row["id"])


def _written(written: OntologyWrite, status: int) -> Response:
    return json_response(
        {
            "pattern_id": written.pattern_id,
            "workspace": written.workspace,
            "position": written.position,
        },
        status,
    )
