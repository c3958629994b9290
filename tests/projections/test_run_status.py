"""The run-status fold, without any I/O: hand-built log entries in, row changes out."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from projection_helpers import STAGES, T0, Clock, as_recorded, interleave, lifecycle, raw

from stageline.actors.events import RunCompleted, RunSubmitted, StageStarted
from stageline.events import new_event
from stageline.projections import run_status
from stageline.projections.run_status import (
    RUN_CREATED,
    RUN_FIELDS,
    STAGE_CREATED,
    STAGE_FIELDS,
    RunStatusChanges,
    fold,
)

MS0 = int(T0.timestamp() * 1000)


def apply(view: dict[str, Any], changes: RunStatusChanges) -> None:
    """The change semantics every adapter implements, over plain dicts (the reference)."""
    runs, stages, counts = view.setdefault("runs", {}), view.setdefault("stages", {}), view
    for run in changes.runs.values():
        row = runs.get(run.run_id)
        if row is None:
            if run.created is None:
                continue  # an unknown run is never created by a later event
            row = runs[run.run_id] = dict(run.created)
        row.update(run.fields)
    for stage in changes.stages.values():
        if stage.run_id not in runs:
            continue
        row = stages.get(stage.key)
        if row is None:
            row = stages[stage.key] = {"attempts": 0, **(stage.created or {})}
        row.update(stage.fields)
        row["attempts"] += stage.attempts
    for status, n in changes.counts.items():
        counts[status] = counts.get(status, 0) + n
    view["position"] = changes.position


def strip_nulls(view: dict[str, Any]) -> dict[str, Any]:
    # a property set to null does not exist: {"error": None} equals {}
    def clean(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {k: {f: v for f, v in row.items() if v is not None} for k, row in rows.items()}

    return {**view, "runs": clean(view["runs"]), "stages": clean(view["stages"])}


def test_a_whole_run_in_one_batch_is_one_row_per_run_and_stage() -> None:
    clock = Clock()
    life = lifecycle("r1", "retried", clock)
    events = as_recorded([(life.stream, e) for e in life.events], first_position=11)

    changes = fold(events)

    assert list(changes.runs) == ["r1"]
    assert sorted(changes.stages) == sorted(("r1", s) for s in STAGES)
    run = changes.runs["r1"]
    assert run.created == {
        "pipeline": "ingest",
        "pipeline_version": 2,
        "status": "processing",
        "submitted_at": MS0 + 5,
        "seq": 11,
    }
    assert run.fields["status"] == "completed"
    assert run.fields["completed_at"] == run.fields["updated_at"] == MS0 + 5 * len(events)
    assert run.fields["current_stage"] == "embed"
    fetch = changes.stages[("r1", "fetch")]
    assert fetch.attempts == 2
    assert fetch.created == {"status": "pending"}
    assert fetch.fields == {
        "index": 0,
        "status": "completed",
        "started_at": MS0 + 20,  # the second attempt's start
        "ended_at": MS0 + 25,
        "duration_ms": 10.0,
        "metadata": '{"chars":0}',
        "error": None,
    }
    # submitted and completed in the same batch: processing never moves
    assert changes.counts == {"completed": 1}
    assert (changes.position, changes.events, changes.rejected) == (20, 10, [])


def test_counts_move_with_each_status_transition_across_batches() -> None:
    life = lifecycle("r1", "failed", Clock())
    events = as_recorded([(life.stream, e) for e in life.events])

    assert fold(events[:1]).counts == {"processing": 1}
    assert fold(events[1:4]).counts == {}
    assert fold(events[4:]).counts == {"processing": -1, "failed": 1}
    run = fold(events[4:]).runs["r1"]
    assert run.created is None
    assert run.fields["error"] == 'ValueError: bad "doc"\nline 2'
    parse = fold(events).stages[("r1", "parse")]
    assert parse.fields["status"] == "failed"
    assert parse.fields["error"] == 'ValueError: bad "doc"\nline 2'


def test_a_new_attempt_clears_what_the_failed_one_left() -> None:
    life = lifecycle("r1", "retried", Clock())
    events = as_recorded([(life.stream, e) for e in life.events])
    failed, restarted = fold(events[:3]), fold(events[3:4])  # StageFailed, then StageStarted

    assert failed.stages[("r1", "fetch")].fields["error"] == "Timeout: slow"
    assert restarted.stages[("r1", "fetch")].attempts == 1
    assert restarted.stages[("r1", "fetch")].fields == {
        "index": 0,
        "status": "active",
        "started_at": MS0 + 20,
        "ended_at": None,
        "duration_ms": None,
        "metadata": None,
        "error": None,
    }


def test_a_repeated_submission_or_ending_counts_once_within_a_batch() -> None:
    clock = Clock()
    submitted = RunSubmitted(pipeline="p", pipeline_version=1, stages=["a"], input={})
    again = RunSubmitted(pipeline="other", pipeline_version=9, stages=["b"], input={})
    events = as_recorded(
        [
            ("run-r1", new_event(submitted, occurred_at=clock())),
            ("run-r1", new_event(again, occurred_at=clock())),
            ("run-r1", new_event(RunCompleted(), occurred_at=clock())),
            ("run-r1", new_event(RunCompleted(), occurred_at=clock())),
        ]
    )

    changes = fold(events)

    assert changes.counts == {"completed": 1}
    assert changes.runs["r1"].created is not None
    assert changes.runs["r1"].created["pipeline"] == "p"
    assert list(changes.stages) == [("r1", "a")]


def test_other_streams_unknown_types_and_bad_payloads_are_skipped() -> None:
    clock = Clock()
    events = as_recorded(
        [
            ("orders-1", new_event(StageStarted(stage="x", index=0), occurred_at=clock())),
            ("run-r1", raw("SomethingElse", {"stage": "x"})),
            ("run-r2", raw(RunSubmitted.topic, {"stages": ["a"]})),  # no pipeline
            ("run-r3", raw(StageStarted.topic, {"index": 0})),  # no stage
        ]
    )

    changes = fold(events)

    assert not changes.has_rows
    assert changes.rejected == [3, 4]
    assert (changes.position, changes.events) == (4, 4)


def test_an_empty_batch_changes_nothing() -> None:
    changes = fold([])
    assert (changes.has_rows, changes.position, changes.events) == (False, 0, 0)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 50])
def test_folding_in_batches_equals_folding_at_once(batch_size: int) -> None:
    clock = Clock()
    kinds = ["completed", "failed", "retried", "running"] * 3
    lives = [lifecycle(f"r{i}", kind, clock) for i, kind in enumerate(kinds)]
    events = as_recorded(interleave(lives))

    at_once: dict[str, Any] = {}
    apply(at_once, fold(events))
    batched: dict[str, Any] = {}
    for start in range(0, len(events), batch_size):
        apply(batched, fold(events[start : start + batch_size]))

    assert strip_nulls(batched) == strip_nulls(at_once)
    for life in lives:
        assert at_once["runs"][life.run_id]["status"] == life.status
    assert {s: at_once.get(s, 0) for s in ("processing", "completed", "failed")} == {
        "processing": 3,
        "completed": 6,
        "failed": 3,
    }
    assert at_once["stages"]["r2/fetch"]["attempts"] == 2  # kinds[2] is "retried"


def test_changes_only_carry_the_declared_fields() -> None:
    # the adapters write exactly these keys: a field the fold adds must be declared
    clock = Clock()
    lives = [lifecycle(f"r{i}", k, clock) for i, k in enumerate(["failed", "retried"])]
    changes = fold(as_recorded(interleave(lives)))
    for run in changes.runs.values():
        assert set(run.fields) <= set(RUN_FIELDS)
        assert set(run.created or {}) <= set(RUN_CREATED)
    for stage in changes.stages.values():
        assert set(stage.fields) <= set(STAGE_FIELDS)
        assert set(stage.created or {}) <= set(STAGE_CREATED)


def test_the_fold_imports_no_io_library() -> None:
    tree = ast.parse(Path(run_status.__file__).read_text())
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
    for module in imported:
        root = module.split(".")[0]
        assert root not in {"redis", "falkordb", "asyncio", "socket", "httpx", "faststream"}
        assert not module.startswith(("stageline.projections.falkordb", "stageline.events.redis"))
