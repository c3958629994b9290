"""The pure rules of a run stream's appends from outside (``actors.reported``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from stageline.actors.events import RunSubmitted, StageStarted
from stageline.actors.reported import ReportedRun
from stageline.errors import Conflict
from stageline.events.envelope import NewEvent, RecordedEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def new(type: str, **data: Any) -> NewEvent:
    return NewEvent(type=type, data=data)


def recorded(version: int, event: NewEvent) -> RecordedEvent:
    return RecordedEvent(
        event_id=event.event_id,
        type=event.type,
        schema_version=1,
        stream="run-r",
        version=version,
        position=version + 1,
        workspace="w",
        occurred_at=T0,
        recorded_at=T0,
        correlation_id=None,
        causation_id=None,
        data=event.data,
    )


SUBMITTED = new("RunSubmitted", pipeline="etl", pipeline_version=0, stages=["a", "b"], input={})
STARTED = new("StageStarted", stage="a", index=0, attempt=1)


def test_an_append_is_folded_in_event_by_event_and_counts_its_new_events() -> None:
    run = ReportedRun.of("run-r", [])
    done = new("StageCompleted", stage="a", index=0, attempt=1)

    assert run.take([SUBMITTED, STARTED, done]) == 3

    assert (run.version, run.completed, run.running, run.attempts) == (2, {0}, set(), {0: 1})


def test_a_refused_append_leaves_the_run_as_it_was() -> None:
    run = ReportedRun.of("run-r", [recorded(0, SUBMITTED)])
    late = new("StageCompleted", stage="a", index=0, attempt=2)

    with pytest.raises(Conflict) as refused:
        run.take([STARTED, late])

    assert refused.value.details == {"stream": "run-r", "index": 1, "rule": "attempts"}
    assert (run.version, run.running, run.attempts) == (0, set(), {})
    assert run.take([STARTED]) == 1


def test_events_the_stream_holds_are_a_retry_not_checked_again() -> None:
    run = ReportedRun.of("run-r", [recorded(0, SUBMITTED), recorded(1, STARTED)])

    assert run.take([SUBMITTED, STARTED]) == 0
    assert run.version == 1


def test_a_run_stageline_drives_takes_nothing_even_if_its_history_is_odd() -> None:
    driven = new("RunSubmitted", pipeline="flaky", pipeline_version=1, stages=["x"], input={})
    run = ReportedRun.of("run-r", [recorded(0, driven)])
    with pytest.raises(Conflict, match="stageline drives this run") as refused:
        run.take([new("Note", text="hi")])
    assert refused.value.details["rule"] == "driven"


def test_a_run_failed_outside_its_stages_names_none() -> None:
    run = ReportedRun.of("run-r", [recorded(0, SUBMITTED)])
    assert run.take([new("RunFailed", stage="", error_type="E", error="before any stage")]) == 1
    assert run.ended == "RunFailed"


def test_typed_payloads_are_read_as_their_fields() -> None:
    run = ReportedRun.of("run-r", [])
    typed = RunSubmitted(pipeline="etl", pipeline_version=0, stages=["a"], input={})
    assert run.take([NewEvent(type="RunSubmitted", data=typed, event_id=uuid.uuid4())]) == 1
    with pytest.raises(Conflict, match="not the run's stage 0"):
        run.take([NewEvent(type="StageStarted", data=StageStarted(stage="b", index=0))])
