"""The ``patterns`` and ``ontology`` writers and readers against the real embedded server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from ontology_history import (
    HISTORY,
    ONT,
    A,
    B,
    G,
    H,
    R,
    Z,
    added,
    batches,
    logged,
    ontology_view,
    patterns_view,
)
from projection_helpers import Clock, lifecycle, of_run

from stageline.actors.events import RunCompleted
from stageline.errors import InvalidArgument
from stageline.events import DomainEvent, RecordedEvent
from stageline.ontology.events import EntityTypeProposed
from stageline.projections import FalkorDBViews
from stageline.projections.projection import Projection
from stageline.projections.registry import ENTITIES, ONTOLOGY, PATTERNS

SOURCES = {"seed": 0, "discovered": 0, "promoted": 0, "manual": 0}


async def project(
    views: FalkorDBViews,
    workspace: str,
    groups: Sequence[Sequence[RecordedEvent]],
    projections: Sequence[Projection[Any]] = (PATTERNS, ONTOLOGY),
) -> None:
    for projection in projections:
        position = await views.checkpoint(workspace, projection.name)
        for group in groups:
            changes = projection.fold(group)
            assert await views.apply(workspace, projection, changes, expected=position)
            position = changes.position


async def read_all(views: FalkorDBViews, workspace: str) -> dict[str, Any]:
    return {
        "patterns": await views.patterns(workspace, include_removed=True, limit=1000),
        "counts": await views.pattern_counts(workspace),
        "status": await views.ontology_status(workspace, bucket_runs=10),
        "status_100": await views.ontology_status(workspace),
    }


async def test_an_unprojected_workspace_reads_as_empty(
    views: FalkorDBViews, workspace: str
) -> None:
    assert await views.patterns(workspace) == []
    assert await views.pattern_counts(workspace) == SOURCES
    got = await views.ontology_status(workspace)
    assert got["pattern_stats"] == SOURCES
    assert got["type_counts"] == {"seed": 0, "provisional": 0, "confirmed": 0, "rejected": 0}
    assert set(got["totals"].values()) == {0}
    assert set(got["rates"].values()) == {None}
    assert got["discovery_curve"] == [
        {"runs_from": 0, "runs_to": 100, "patterns": 0, "types": 0, "per_100_runs": 0.0}
    ]
    assert await views.pattern_counts("_global") == SOURCES
    with pytest.raises(InvalidArgument):
        await views.ontology_status(workspace, bucket_runs=15)
    with pytest.raises(InvalidArgument):
        await views.patterns(workspace, limit=0)


async def test_the_history_reads_back_as_the_reference_says(
    views: FalkorDBViews, workspace: str
) -> None:
    await project(views, workspace, [[e] for e in HISTORY])  # one batch per event
    reference = patterns_view([HISTORY])
    rows = await views.patterns(workspace, include_removed=True, limit=1000)
    assert {r["id"] for r in rows} == set(reference)
    for row in rows:
        want = reference[row["id"]]
        for key in ("name", "source", "confidence", "is_global", "active", "removed_reason"):
            assert row[key] == want.get(key), (row["id"], key)
        assert (row["matches"], row["runs_matched"]) == (want["matches"], want["runs_matched"])
        assert (row["first_seen"] is None) == ("first_seen" not in want)
    assert [r["matches"] for r in rows] == sorted((r["matches"] for r in rows), reverse=True)
    assert rows[0]["id"] == Z  # 4 matches
    assert rows[0]["first_seen"] == rows[0]["last_seen"] is not None
    active = {r["id"] for r in await views.patterns(workspace)}
    assert active == {A, H, Z, R}
    assert {r["id"] for r in await views.patterns(workspace, source="manual")} == {H, Z, R}
    assert [r["id"] for r in await views.patterns(workspace, entity_type="robot")] == [R]
    assert [r["id"] for r in await views.patterns(workspace, limit=1)] == [Z]
    removed = await views.patterns(workspace, include_removed=True, entity_type="person")
    assert {(r["id"], r["active"]) for r in removed} == {(A, True), (B, False)}
    assert G not in active

    # the workspace's own active patterns only (H is a global one matched here)
    assert await views.pattern_counts(workspace) == SOURCES | {"seed": 1, "manual": 2}

    got = await views.ontology_status(workspace, bucket_runs=10)
    ref = ontology_view([HISTORY])
    assert got["type_counts"] == {"seed": 1, "provisional": 1, "confirmed": 1, "rejected": 1}
    assert got["totals"] == {
        "patterns": 3,
        "types": 4,
        "runs": 21,
        "mentions": ref["counters"]["mentions"],
        "mentions_established": ref["counters"]["mentions_established"],
        "patterns_discovered": 2,
        "types_proposed": 3,
    }
    assert got["rates"] == {
        "promotion_rate": None,
        "confirmation_rate": 1 / 3,
        "rejection_rate": 1 / 3,
        "resolved_by_confirmed": 10 / 11,
    }
    assert [(b["runs_from"], b["patterns"], b["types"]) for b in got["discovery_curve"]] == [
        (0, 1, 1),
        (10, 1, 1),
        (20, 0, 1),
    ]
    assert got["discovery_curve"][0]["per_100_runs"] == 20.0
    coarse = await views.ontology_status(workspace)
    assert coarse["discovery_curve"] == [
        {"runs_from": 0, "runs_to": 100, "patterns": 2, "types": 3, "per_100_runs": 5.0}
    ]


@pytest.mark.parametrize("cuts", [[], [5, 17, 30], list(range(3, len(HISTORY), 3))])
async def test_any_batches_read_the_same_as_one_event_per_batch(
    views: FalkorDBViews, workspace: str, cuts: list[int]
) -> None:
    await project(views, workspace, [[e] for e in HISTORY])
    live = await read_all(views, workspace)
    other = f"{workspace}-b"
    await project(views, other, batches(HISTORY, cuts))
    assert await read_all(views, other) == live


async def test_each_rebuilds_alone_to_the_live_view(views: FalkorDBViews, workspace: str) -> None:
    mentions = of_run(lifecycle("m1", "mentioned", Clock()), first_position=len(HISTORY) + 1)
    events = [*HISTORY, *mentions]
    await project(views, workspace, [[e] for e in events], (PATTERNS, ONTOLOGY, ENTITIES))
    live = await read_all(views, workspace)
    entities = await views.entities(workspace)
    assert entities

    for projection in (PATTERNS, ONTOLOGY):
        await views.drop(workspace, projection)
        assert await views.checkpoint(workspace, projection.name) == 0
        await project(views, workspace, [events], [projection])
        assert await read_all(views, workspace) == live
        assert await views.entities(workspace) == entities  # the others stay as they were
    await views.drop(workspace, PATTERNS)
    assert await views.patterns(workspace, include_removed=True) == []
    status = await views.ontology_status(workspace, bucket_runs=10)
    for part in ("type_counts", "discovery_curve"):  # the ontology projection's, untouched
        assert status[part] == live["status"][part]
    assert status["pattern_stats"] == SOURCES


def runs(first: int, n: int) -> list[tuple[str, DomainEvent]]:
    return [(f"run-r{i}", RunCompleted()) for i in range(first, first + n)]


async def test_the_curve_places_discoveries_by_the_stored_runs_counter(
    views: FalkorDBViews, workspace: str
) -> None:
    events = logged(
        [
            *runs(0, 8),
            (ONT, added("P8", "technology", "discovered")),  # 8 runs: bucket 0
            *runs(8, 3),
            (ONT, EntityTypeProposed(name="t11", pattern_id="p")),  # 11 runs: bucket 1
            (ONT, added("P11", "technology", "discovered")),
            (ONT, added("P8", "technology", "discovered")),  # again: once per id
            *runs(11, 9),
            (ONT, added("P20", "technology", "discovered")),  # 20 runs: bucket 2
            *runs(20, 15),
            (ONT, EntityTypeProposed(name="t35", pattern_id="p")),  # 35 runs: bucket 3
        ]
    )
    # cut where the batch's own runs and the stored counter both matter
    await project(views, workspace, batches(events, [5, 10, 13, 16, 30]))
    got = await views.ontology_status(workspace, bucket_runs=10)
    assert got["totals"]["runs"] == 35
    assert [
        (b["runs_from"], b["runs_to"], b["patterns"], b["types"]) for b in got["discovery_curve"]
    ] == [
        (0, 10, 1, 0),
        (10, 20, 1, 1),
        (20, 30, 1, 0),
        (30, 40, 0, 1),
    ]
    assert (got["totals"]["patterns_discovered"], got["totals"]["types_proposed"]) == (3, 2)
    wide = await views.ontology_status(workspace, bucket_runs=20)
    assert [(b["patterns"], b["types"], b["per_100_runs"]) for b in wide["discovery_curve"]] == [
        (2, 1, 15.0),
        (1, 1, 10.0),
    ]
    other = f"{workspace}-b"
    await project(views, other, [events])
    assert await views.ontology_status(other, bucket_runs=10) == got
