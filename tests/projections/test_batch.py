"""Every projection's fold over a whole batch: what it skips, rejects and checkpoints."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from projection_helpers import Clock, as_recorded, raw

from stageline.actors.builtin.memory import EntityMentioned
from stageline.actors.configs import PipelineDeleted
from stageline.actors.events import DeadLetterRedriven, RunSubmitted, StageFailed, StageStarted
from stageline.events import new_event
from stageline.events.keys import pipeline_stream
from stageline.projections import (
    _cypher,
    batch,
    changes,
    dead_letters,
    entities,
    pipeline_configs,
    projection,
    registry,
    run_status,
)
from stageline.projections._cypher import entities as entities_graph
from stageline.projections._cypher import pipelines as pipelines_graph
from stageline.projections._cypher import run_status as run_status_graph


def test_other_streams_unknown_types_and_bad_payloads_are_skipped() -> None:
    clock = Clock()
    events = as_recorded(
        [
            ("orders-1", new_event(StageStarted(stage="x", index=0), occurred_at=clock())),
            ("run-r1", raw("SomethingElse", {"stage": "x"})),
            ("run-r2", raw(RunSubmitted.topic, {"stages": ["a"]})),  # no pipeline
            ("run-r3", raw(StageStarted.topic, {"index": 0})),  # no stage
            (
                "run-r4",
                raw(
                    StageFailed.topic,
                    {
                        "stage": "a",
                        "error_type": "E",
                        "error": "x",
                        "will_retry": True,
                        "retry_at": "soon",
                    },
                ),
            ),
            ("dead-letters", raw(DeadLetterRedriven.topic, {})),  # no dead letter
            ("run-r5", raw(EntityMentioned.topic, {"entity": ["a"], "entity_type": "t"})),
        ]
    )

    runs, mentions = run_status.fold(events), entities.fold(events)

    assert not runs.has_rows and not mentions.has_rows
    # each projection rejects the events it folds, and only those
    assert runs.rejected == [3, 4, 5, 6]
    assert mentions.rejected == [7]
    assert pipeline_configs.fold(events).rejected == []
    for changes_ in (runs, mentions, pipeline_configs.fold(events)):
        assert (changes_.position, changes_.events) == (7, 7)


def test_each_projection_folds_only_its_own_events() -> None:
    clock = Clock()
    mention = EntityMentioned(entity="Ada", entity_type="person", surface="Ada", start=0, end=3)
    events = as_recorded(
        [
            ("notes-1", new_event(mention, occurred_at=clock())),
            ("orders-1", new_event(DeadLetterRedriven(dead_letter="d1"), occurred_at=clock())),
            (pipeline_stream("p"), raw(PipelineDeleted.topic, {"name": "p", "version": 1})),
        ]
    )

    runs, mentions, configs = (p.fold(events) for p in registry.PROJECTIONS[:3])

    # mentions and dead letters count on any stream
    assert list(mentions.entities) == ["person/Ada"]
    assert list(runs.dead_letters) == ["d1"]
    assert (runs.runs, runs.stages) == ({}, {})
    assert list(configs.pipelines) == ["p"]
    assert runs.has_rows and mentions.has_rows and configs.has_rows
    assert not pipeline_configs.fold(events[:2]).has_rows


@pytest.mark.parametrize("project", registry.PROJECTIONS, ids=lambda p: p.name)
def test_an_empty_batch_changes_nothing(project: projection.Projection) -> None:  # type: ignore[type-arg]
    changes_ = project.fold([])
    assert (changes_.has_rows, changes_.position, changes_.events) == (False, 0, 0)


def test_the_registry_names_each_projection_once() -> None:
    assert registry.NAMES[:3] == ("run_status", "entities", "pipelines")
    assert len(set(registry.NAMES)) == len(registry.NAMES)
    assert registry.get("entities") is registry.ENTITIES
    with pytest.raises(Exception, match="projections: run_status, entities, pipelines"):
        registry.get("nope")


def test_each_event_type_has_one_handler_per_projection() -> None:
    assert set(run_status.FOLD) == set(run_status.HANDLERS) | set(dead_letters.HANDLERS)
    assert len(run_status.FOLD) == len(run_status.HANDLERS) + len(dead_letters.HANDLERS)
    assert {t for t, (_, on_run) in run_status.FOLD.items() if on_run} == set(run_status.HANDLERS)
    # no event type is folded by two of these projections
    assert not set(run_status.FOLD) & set(entities.HANDLERS)
    assert not set(run_status.FOLD) & set(pipeline_configs.HANDLERS)
    assert not set(entities.HANDLERS) & set(pipeline_configs.HANDLERS)


def test_each_projection_owns_its_nodes_and_drops_only_them() -> None:
    labels = {p.name: {n.split()[0] for n in p.writer.nodes} for p in registry.PROJECTIONS}
    assert labels["run_status"] == {
        "Run",
        "Stage",
        "Counts",
        "PipelineCounts",
        "StageDurations",
        "DeadLetter",
    }
    assert labels["entities"] == {"Entity"}
    assert labels["pipelines"] == {"PipelineConfig"}
    every = [label for owned in labels.values() for label in owned]
    assert len(every) == len(set(every)), "two projections claim the same nodes"
    deleted = re.compile(r"MATCH \(n:(\w+)[^)]*\) DETACH DELETE n")
    for p in registry.PROJECTIONS:
        assert set(deleted.findall(p.writer.drop)) == labels[p.name], p.name
        # the first write clears what was left of the projection without a checkpoint
        assert set(deleted.findall(p.writer.write_first)) == labels[p.name], p.name
        assert set(deleted.findall(p.writer.advance_first)) == labels[p.name], p.name
        assert deleted.findall(p.writer.write) == deleted.findall(p.writer.advance) == []


@pytest.mark.parametrize(
    "module",
    [
        batch,
        changes,
        run_status,
        dead_letters,
        entities,
        pipeline_configs,
        projection,
        registry,
        _cypher,
        run_status_graph,
        entities_graph,
        pipelines_graph,
    ],
)
def test_the_folds_and_the_registry_import_no_io_library(module: object) -> None:
    tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
    imported = {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
        )
    }
    assert imported, "no imports found: the check would pass vacuously"
    for name in imported:
        root = name.split(".")[0]
        assert root not in {"redis", "falkordb", "asyncio", "socket", "httpx", "faststream"}
        assert not name.startswith(("stageline.projections.falkordb", "stageline.events.redis"))
        assert not name.startswith("stageline.projections.projector")
