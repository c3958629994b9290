"""The projection's fold over a whole batch: what it skips, rejects and checkpoints."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from projection_helpers import Clock, as_recorded, raw

from stageline.actors.builtin.memory import EntityMentioned
from stageline.actors.events import DeadLetterRedriven, RunSubmitted, StageFailed, StageStarted
from stageline.events import new_event
from stageline.projections import (
    batch,
    changes,
    dead_letters,
    entities,
    fold,
    pipeline_configs,
    run_status,
)


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

    changes = fold(events)

    assert not changes.has_rows
    assert changes.rejected == [3, 4, 5, 6, 7]
    assert (changes.position, changes.events) == (7, 7)


def test_mentions_and_dead_letters_count_on_any_stream() -> None:
    clock = Clock()
    mention = EntityMentioned(entity="Ada", entity_type="person", surface="Ada", start=0, end=3)
    events = as_recorded(
        [
            ("notes-1", new_event(mention, occurred_at=clock())),
            ("orders-1", new_event(DeadLetterRedriven(dead_letter="d1"), occurred_at=clock())),
        ]
    )

    changes = fold(events)

    assert list(changes.entities) == ["person/Ada"]
    assert list(changes.dead_letters) == ["d1"]
    assert changes.has_rows


def test_an_empty_batch_changes_nothing() -> None:
    changes = fold([])
    assert (changes.has_rows, changes.position, changes.events) == (False, 0, 0)


def test_each_event_type_has_one_handler() -> None:
    tables = [
        run_status.HANDLERS,
        dead_letters.HANDLERS,
        entities.HANDLERS,
        pipeline_configs.HANDLERS,
    ]
    assert len(batch.HANDLERS) == sum(len(t) for t in tables)
    assert {t for t, (_, on_run) in batch.HANDLERS.items() if on_run} == set(run_status.HANDLERS)


@pytest.mark.parametrize(
    "module", [batch, changes, run_status, dead_letters, entities, pipeline_configs]
)
def test_the_fold_imports_no_io_library(module: object) -> None:
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
