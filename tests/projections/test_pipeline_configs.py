"""The pipeline-configs view: the pure fold, then the FalkorDB writer and reader."""

from __future__ import annotations

from typing import Any

import pytest
from projection_helpers import logged

from stageline.actors.configs import PipelineDefined, PipelineDeleted
from stageline.actors.events import RunCompleted
from stageline.actors.pipeline import Pipeline, RetryPolicy, StageSpec
from stageline.events import RecordedEvent
from stageline.events.keys import pipeline_stream
from stageline.projections import PIPELINES, FalkorDBViews
from stageline.projections.pipeline_configs import fold


def definition(name: str, *stages: str, description: str = "") -> Pipeline:
    specs = tuple(
        StageSpec(name=s, actor="normalize", retry=RetryPolicy(max_retries=1)) for s in stages
    )
    return Pipeline(name=name, description=description, stages=specs)


A, B = pipeline_stream("alpha"), pipeline_stream("beta")
HISTORY = logged(
    [
        (A, PipelineDefined.of(definition("alpha", "one"), 1)),
        (B, PipelineDefined.of(definition("beta", "x", "y", description="béta"), 1)),
        ("run-r1", RunCompleted()),
        (A, PipelineDefined.of(definition("alpha", "one", "two", description="v2"), 2)),
        (B, PipelineDeleted(name="beta", version=1)),
        (pipeline_stream("gamma"), PipelineDefined.of(definition("gamma", "g"), 1)),
        (pipeline_stream("gamma"), PipelineDeleted(name="gamma", version=1)),
        (pipeline_stream("gamma"), PipelineDefined.of(definition("gamma", "h"), 3)),
    ]
)


def rows(batches: list[list[RecordedEvent]]) -> dict[str, dict[str, Any]]:
    """The rows the changes of consecutive batches leave, applied last-writer-wins."""
    view: dict[str, dict[str, Any]] = {}
    for batch in batches:
        for change in fold(batch).pipelines.values():
            view.setdefault(change.name, {}).update(change.fields)
    return view


def test_each_config_is_one_row_at_its_latest_version() -> None:
    view = rows([HISTORY])
    assert {n: (r["version"], r["deleted"], r["stages"]) for n, r in view.items()} == {
        "alpha": (2, False, ["one", "two"]),
        "beta": (1, True, ["x", "y"]),
        "gamma": (3, False, ["h"]),
    }
    assert view["alpha"]["description"] == "v2"
    assert view["alpha"]["actors"] == ["normalize", "normalize"]
    assert view["beta"]["updated_at"] > view["beta"]["defined_at"]


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_batches_compose(size: int) -> None:
    batches = [HISTORY[i : i + size] for i in range(0, len(HISTORY), size)]
    assert rows(batches) == rows([HISTORY])


def test_only_definitions_in_their_place_on_config_streams_count() -> None:
    events = logged(
        [
            ("run-r1", PipelineDefined.of(definition("alpha", "one"), 1)),
            ("somewhere", PipelineDeleted(name="alpha", version=1)),
            (A, PipelineDefined.of(definition("alpha", "one"), 5)),  # not at its place
            (A, PipelineDefined.of(definition("other", "one"), 2)),  # another name
        ]
    )
    changes = fold(events)
    assert changes.pipelines == {}
    assert changes.rejected == []
    assert changes.position == 4


async def test_the_view_lists_live_configs_and_a_rebuild_equals_it(
    views: FalkorDBViews, workspace: str
) -> None:
    position = 0
    for event in HISTORY:  # one batch per event, as a live projector might
        changes = fold([event])
        assert await views.apply(workspace, PIPELINES, changes, expected=position)
        position = changes.position
    live = await views.pipelines(workspace)
    assert [(p["name"], p["version"], p["stages"]) for p in live] == [
        ("alpha", 2, ["one", "two"]),
        ("gamma", 3, ["h"]),
    ]
    assert live[0]["description"] == "v2"
    assert live[0]["updated_at"] == "2026-03-01T12:00:04.000Z"
    await views.drop(workspace, PIPELINES)
    assert await views.pipelines(workspace) == []
    assert await views.apply(workspace, PIPELINES, fold(HISTORY), expected=0)
    assert await views.pipelines(workspace) == live
