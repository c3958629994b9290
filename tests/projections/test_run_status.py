"""The run-status fold, without any I/O: hand-built log entries in, row changes out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import pytest
from projection_helpers import KINDS, STAGES, T0, Clock, as_recorded, interleave, lifecycle, of_run
from reference_view import apply, counted, empty, strip_nulls

from stageline.actors.events import (
    RunCancelled,
    RunCompensated,
    RunCompleted,
    RunRetried,
    RunSubmitted,
    StageStarted,
)
from stageline.events import RecordedEvent, new_event
from stageline.projections.run_status import (
    RUN_CREATED,
    RUN_FIELDS,
    STAGE_CREATED,
    STAGE_FIELDS,
    fold,
    shown_stages,
)

MS0 = int(T0.timestamp() * 1000)


def at(n: int) -> int:
    """The time of a lifecycle's n-th event (1-based), in ms."""
    return MS0 + 5 * n


def then(events: list[RecordedEvent], *payloads: Any) -> list[RecordedEvent]:
    """``payloads`` appended to the same run's stream after ``events``, 5 ms apart."""
    clock = Clock(events[-1].occurred_at)
    pairs = [(events[-1].stream, new_event(p, occurred_at=clock())) for p in payloads]
    return as_recorded(pairs, first_position=events[-1].position + 1, after=events)


def counts(*batches: list[RecordedEvent]) -> dict[str, int]:
    """The run counts the writer leaves after folding ``batches`` one after another."""
    view = empty()
    for batch in batches:
        apply(view, fold(batch))
    assert {s: n for s, n in view["counts"].items() if n} == counted(view)
    return {s: n for s, n in view["counts"].items() if n}


def test_a_whole_run_in_one_batch_is_one_row_per_run_and_stage() -> None:
    events = of_run(lifecycle("r1", "retried", Clock()), first_position=11)

    changes = fold(events)

    assert list(changes.runs) == ["r1"]
    assert sorted(changes.stages) == sorted(("r1", s) for s in STAGES)
    run = changes.runs["r1"]
    assert run.created == {
        "pipeline": "ingest",
        "pipeline_version": 2,
        "status": "processing",
        "submitted_at": at(1),
        "seq": 11,
    }
    assert run.fields["status"] == "completed"
    assert not run.soft
    assert run.fields["completed_at"] == run.fields["ended_at"] == at(len(events))
    assert run.fields["current_stage"] == "embed"
    fetch = changes.stages[("r1", "fetch")]
    assert fetch.attempts == 2
    assert fetch.created == {"status": "pending"}
    assert fetch.fields == {
        "index": 0,
        "status": "completed",
        "started_at": at(4),  # the second attempt's start
        "ended_at": at(5),
        "duration_ms": 10.0,
        "metadata": '{"chars":0}',
        "error": None,
        "retry_at": None,
    }
    # submitted and completed in the same batch: counted where it ended
    assert counts(events) == {"completed": 1}
    assert (changes.position, changes.events, changes.rejected) == (20, 10, [])


def test_a_run_is_counted_where_each_batch_leaves_it() -> None:
    events = of_run(lifecycle("r1", "failed", Clock()))

    assert counts(events[:1]) == {"processing": 1}
    assert counts(events[:1], events[1:4]) == {"processing": 1}
    assert counts(events[:1], events[1:4], events[4:]) == {"failed": 1}
    ending = fold(events[4:])
    run = ending.runs["r1"]
    assert run.created is None
    assert (run.fields["status"], run.soft) == ("failed", False)
    assert run.fields["error"] == 'ValueError: bad "doc"\nline 2'
    assert run.fields["dead_letter"] is None
    parse = fold(events).stages[("r1", "parse")]
    assert parse.fields["status"] == "failed"
    assert parse.fields["error"] == 'ValueError: bad "doc"\nline 2'


def test_a_failed_attempt_that_will_retry_leaves_the_run_retrying() -> None:
    events = of_run(lifecycle("r1", "retried", Clock()))  # 3: StageFailed, 4: StageStarted
    in_one = fold(events[:3])
    failed, restarted = fold(events[2:3]), fold(events[3:4])

    assert in_one.runs["r1"].fields["status"] == "retrying"
    assert counts(events[:3]) == {"retrying": 1}
    fetch = failed.stages[("r1", "fetch")]
    assert fetch.attempts == 0
    assert fetch.fields == {
        "index": 0,
        "status": "retrying",
        "ended_at": at(3),
        "duration_ms": 0.0,
        "error": "Timeout: slow",
        "retry_at": at(2) + 1000,  # a second after the attempt started
    }
    # where r1 stood before this batch is unknown: the writer checks the stored status
    assert (failed.runs["r1"].fields["status"], failed.runs["r1"].soft) == ("retrying", True)
    assert (restarted.runs["r1"].fields["status"], restarted.runs["r1"].soft) == (
        "processing",
        True,
    )
    assert restarted.stages[("r1", "fetch")].attempts == 1
    assert restarted.stages[("r1", "fetch")].fields == {
        "index": 0,
        "status": "active",
        "started_at": at(4),
        "ended_at": None,
        "duration_ms": None,
        "metadata": None,
        "error": None,
        "retry_at": None,
    }


def test_an_attempt_after_an_ending_leaves_the_run_ended() -> None:
    # the runtime never records one (its appends are version-checked), and ignores one if it did
    events = of_run(lifecycle("r1", "completed", Clock()))
    stray = then(events, StageStarted(stage="parse", index=1, attempt=2))

    in_one = fold(events + stray)
    assert in_one.runs["r1"].fields["status"] == "completed"
    assert counts(events + stray) == {"completed": 1}
    assert in_one.stages[("r1", "parse")].attempts == 2

    ended_then_stray = fold(events[-1:] + stray)
    assert (ended_then_stray.runs["r1"].fields["status"], ended_then_stray.runs["r1"].soft) == (
        "completed",
        False,
    )


def test_a_stage_that_gives_up_leaves_the_run_status_to_what_follows() -> None:
    events = of_run(lifecycle("r1", "skipped", Clock()))  # 5: StageFailed, 6: StageSkipped

    failed, skipped = fold(events[4:5]), fold(events[5:6])

    assert "status" not in failed.runs["r1"].fields
    assert failed.stages[("r1", "parse")].fields["status"] == "failed"
    assert failed.stages[("r1", "parse")].fields["retry_at"] is None
    assert "status" not in skipped.runs["r1"].fields
    assert skipped.runs["r1"].fields["current_stage"] == "embed"
    assert skipped.stages[("r1", "parse")].fields == {
        "index": 1,
        "status": "skipped",
        "retry_at": None,
    }
    whole = fold(events)
    assert whole.runs["r1"].fields["status"] == "completed"
    assert [whole.stages[("r1", s)].fields["status"] for s in STAGES] == [
        "completed",
        "skipped",
        "completed",
    ]


def test_a_fallback_jumps_over_the_stages_between() -> None:
    changes = fold(of_run(lifecycle("r1", "fallback", Clock())))

    stages = {name: changes.stages[("r1", name)] for name in STAGES}
    assert [(s.fields.get("status", "pending"), s.attempts) for s in stages.values()] == [
        ("skipped", 2),
        ("pending", 0),
        ("completed", 1),
    ]
    assert stages["fetch"].fields["error"] == 'ValueError: bad "doc"\nline 2'
    assert changes.runs["r1"].fields["status"] == "completed"


def test_undo_compensates_the_stage_then_the_run_even_after_it_completed() -> None:
    events = of_run(lifecycle("r1", "undone", Clock()))
    completed = next(i for i, e in enumerate(events) if e.type == RunCompleted.topic)

    undo = fold(events[completed + 1 :])

    run = undo.runs["r1"]
    assert (run.fields["status"], run.soft) == ("compensated", False)
    assert (run.fields["reason"], run.fields["ended_at"]) == ("undo", at(len(events)))
    assert undo.stages[("r1", "parse")].fields["status"] == "compensated"
    assert counts(events) == {"compensated": 1}


def test_a_cancelled_run_keeps_its_reason() -> None:
    events = of_run(lifecycle("r1", "cancelled", Clock()))

    assert counts(events) == {"cancelled": 1}
    run = fold(events[-1:]).runs["r1"]
    assert (run.fields["status"], run.soft, run.fields["reason"]) == (
        "cancelled",
        False,
        "user asked",
    )
    assert fold(events).stages[("r1", "fetch")].fields["status"] == "retrying"


def test_a_cancelled_runs_stage_waiting_for_a_retry_shows_pending_without_retry_at() -> None:
    def stages() -> list[dict[str, Any]]:
        return [
            {"name": "fetch", "status": "retrying", "retry_at": "t", "error": "Timeout: slow"},
            {"name": "parse", "status": "pending", "retry_at": None, "error": None},
        ]

    shown = shown_stages("cancelled", stages())
    assert shown[0] == {
        "name": "fetch",
        "status": "pending",
        "retry_at": None,
        "error": "Timeout: slow",
    }
    assert shown[1] == stages()[1]
    for status in ("retrying", "processing", "failed", "compensated"):
        assert shown_stages(status, stages()) == stages()


def test_a_stage_running_when_its_run_is_cancelled_or_undone_shows_cancelled() -> None:
    def stages() -> list[dict[str, Any]]:
        return [
            {"name": "fetch", "status": "completed", "started_at": 1},
            {"name": "parse", "status": "active", "started_at": 2},
            {"name": "embed", "status": "pending", "started_at": None},
        ]

    for status in ("cancelled", "compensated"):
        shown = shown_stages(status, stages())
        assert [s["status"] for s in shown] == ["completed", "cancelled", "pending"]
        assert shown[1]["started_at"] == 2
    for status in ("processing", "retrying", "completed", "failed", None):
        assert shown_stages(status, stages()) == stages()  # it may yet end by itself


def test_a_retried_run_reopens_with_its_stage_pending() -> None:
    events = of_run(lifecycle("r1", "redriven", Clock()))
    retried = next(i for i, e in enumerate(events) if e.type == RunRetried.topic)
    failed = fold(events[:retried])
    assert failed.runs["r1"].fields["status"] == "failed"
    assert failed.runs["r1"].fields["dead_letter"] is not None

    reopened = fold(events[retried : retried + 1])

    run = reopened.runs["r1"]
    assert (run.fields["status"], run.soft) == ("processing", False)
    assert {
        k: run.fields[k] for k in ("error", "dead_letter", "ended_at", "reason")
    } == dict.fromkeys(("error", "dead_letter", "ended_at", "reason"))
    assert run.fields["current_stage"] == "parse"
    parse = reopened.stages[("r1", "parse")]
    assert (parse.attempts, parse.fields) == (
        0,
        {"index": 1, "status": "pending", "retry_at": None},
    )
    assert fold(events).stages[("r1", "parse")].attempts == 3


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

    assert counts(events) == {"completed": 1}
    assert changes.runs["r1"].created is not None
    assert changes.runs["r1"].created["pipeline"] == "p"
    assert list(changes.stages) == [("r1", "a")]


def test_a_repeated_submission_in_a_later_batch_counts_the_run_once() -> None:
    # stageline's submitter cannot append one (it expects no stream); a raw append can
    events = of_run(lifecycle("r1", "completed", Clock()))
    again = then(events, RunSubmitted(pipeline="p", pipeline_version=1, stages=["a"], input={}))

    assert counts(events, again) == {"completed": 1}
    assert counts(events[:1], again) == {"processing": 1}


def test_a_run_is_new_to_the_view_only_from_the_first_event_of_its_stream() -> None:
    # then nothing stored can need its nulls, and the writer leaves them out
    events = of_run(lifecycle("r1", "completed", Clock()))
    again = then(events, RunSubmitted(pipeline="p", pipeline_version=1, stages=["a"], input={}))

    assert fold(events).runs["r1"].new
    assert not fold(events[1:]).runs["r1"].new
    assert not fold(again).runs["r1"].new


def test_endings_after_an_ending_move_the_run_again() -> None:
    # cancel refuses an ended run, but the view follows whatever the log holds
    events = of_run(lifecycle("r1", "completed", Clock()))
    later = then(events, RunCancelled(reason="late"), RunCompensated(stages=STAGES))

    assert fold(later[:1]).runs["r1"].fields["status"] == "cancelled"
    assert fold(later).runs["r1"].fields["status"] == "compensated"
    assert counts(events + later) == {"compensated": 1}
    assert counts(events, later) == {"compensated": 1}


def every_kind(clock: Clock, copies: int = 2) -> list:
    return [lifecycle(f"{kind}{i}", kind, clock) for i in range(copies) for kind in KINDS]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 50, 1000])
def test_folding_in_batches_equals_folding_at_once(batch_size: int) -> None:
    lives = every_kind(Clock())
    events = as_recorded(interleave(lives))

    at_once = empty()
    apply(at_once, fold(events))
    batched = empty()
    for start in range(0, len(events), batch_size):
        apply(batched, fold(events[start : start + batch_size]))
        # the counts equal the rows at every batch boundary, not just at the end
        assert {s: n for s, n in batched["counts"].items() if n} == counted(batched)

    assert strip_nulls(batched) == strip_nulls(at_once)
    for life in lives:
        assert at_once["runs"][life.run_id]["status"] == life.status
    assert counted(at_once) == {
        status: 2 * sum(1 for s in KINDS.values() if s == status) for status in set(KINDS.values())
    }
    attempts = {k: row["attempts"] for k, row in at_once["stages"].items() if k.endswith("0/fetch")}
    assert attempts["retried0/fetch"] == attempts["fallback0/fetch"] == 2
    assert at_once["stages"]["redriven0/parse"]["attempts"] == 3


def test_changes_only_carry_the_declared_fields() -> None:
    # the adapters write exactly these keys: a field the fold adds must be declared
    changes = fold(as_recorded(interleave(every_kind(Clock(), copies=1))))
    for run in changes.runs.values():
        assert set(run.fields) <= set(RUN_FIELDS)
        assert set(run.created or {}) <= set(RUN_CREATED)
    for stage in changes.stages.values():
        assert set(stage.fields) <= set(STAGE_FIELDS)
        assert set(stage.created or {}) <= set(STAGE_CREATED)


def test_retry_at_is_read_as_text_or_as_a_datetime() -> None:
    # the Redis store hands back JSON text, the in-memory store the datetime itself
    events = of_run(lifecycle("r1", "retrying", Clock()))
    as_text = events[2]
    assert isinstance(as_text.data["retry_at"], str)
    as_datetime = msgspec.structs.replace(
        as_text,
        data={**as_text.data, "retry_at": datetime.fromisoformat(as_text.data["retry_at"])},
    )
    naive = msgspec.structs.replace(
        as_text, data={**as_text.data, "retry_at": "2026-03-01T12:00:01.010"}
    )

    retry_at = {
        fold([e]).stages[("r1", "fetch")].fields["retry_at"] for e in (as_text, as_datetime, naive)
    }

    assert retry_at == {at(2) + 1000}
