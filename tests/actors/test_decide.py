"""The stage decision rules, folded from hand-built run histories (no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from stageline.actors.decide import (
    Begin,
    Defer,
    Drop,
    Finish,
    Forward,
    decide_finish,
    decide_start,
    fold_run,
)
from stageline.events.envelope import RecordedEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def history(*events: tuple[str, dict[str, Any]], start: datetime = T0) -> list[RecordedEvent]:
    return [
        RecordedEvent(
            event_id=uuid.uuid4(),
            type=t,
            schema_version=1,
            stream="run-r1",
            version=i,
            position=i + 1,
            workspace="w",
            occurred_at=start + timedelta(seconds=i),
            recorded_at=start + timedelta(seconds=i),
            correlation_id=None,
            causation_id=None,
            data=d,
        )
        for i, (t, d) in enumerate(events)
    ]


SUBMITTED = (
    "RunSubmitted",
    {"pipeline": "p", "pipeline_version": 1, "stages": ["a", "b"], "input": {"text": "x"}},
)


def started(index: int, attempt: int = 1) -> tuple[str, dict[str, Any]]:
    return ("StageStarted", {"stage": "s", "index": index, "attempt": attempt})


def completed(index: int, output: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    return ("StageCompleted", {"stage": "s", "index": index, "output": output or {}})


NOW = T0.timestamp() + 3600


def test_fold_merges_stage_outputs_into_the_item() -> None:
    state = fold_run(history(SUBMITTED, started(0), completed(0, {"text": "clean", "n": 1})))
    assert state.item == {"text": "clean", "n": 1}
    assert state.version == 2
    assert state.stages[0].completed


def test_missing_run_is_dropped() -> None:
    assert isinstance(decide_start(fold_run([]), 0, now=NOW, timeout=30), Drop)


def test_terminal_run_is_dropped() -> None:
    state = fold_run(
        history(
            SUBMITTED, started(0), ("RunFailed", {"stage": "s", "error_type": "E", "error": "e"})
        )
    )
    assert decide_start(state, 0, now=NOW, timeout=30) == Drop("run ended with RunFailed")


def test_stage_not_started_after_unrelated_events_begins_at_actual_version() -> None:
    state = fold_run(history(SUBMITTED, ("SomethingExternal", {})))
    assert decide_start(state, 0, now=NOW, timeout=30) == Begin(1, 1)


def test_completed_stage_without_successor_is_forwarded_with_merged_item() -> None:
    events = history(SUBMITTED, started(0), completed(0, {"k": "v"}))
    decision = decide_start(fold_run(events), 0, now=NOW, timeout=30)
    assert isinstance(decision, Forward)
    assert (decision.next_index, decision.version) == (1, 2)
    assert decision.item == {"text": "x", "k": "v"}
    assert decision.cause == str(events[2].event_id)


def test_completed_stage_already_handed_on_is_dropped() -> None:
    state = fold_run(history(SUBMITTED, started(0), completed(0), started(1)))
    assert decide_start(state, 0, now=NOW, timeout=30) == Drop("stage completed and handed on")


def test_command_ahead_of_its_previous_stage_is_dropped() -> None:
    state = fold_run(history(SUBMITTED, started(0)))
    assert decide_start(state, 1, now=NOW, timeout=30) == Drop("previous stage has not completed")


def test_unfinished_attempt_within_its_timeout_is_deferred_not_doubled() -> None:
    state = fold_run(history(SUBMITTED, started(0)))
    now = T0.timestamp() + 1 + 10  # started at T0+1s, 10 s ago
    decision = decide_start(state, 0, now=now, timeout=30, grace=5)
    assert decision == Defer(T0.timestamp() + 1 + 30 + 5)


def test_unfinished_attempt_past_timeout_and_grace_is_abandoned_for_a_new_attempt() -> None:
    state = fold_run(history(SUBMITTED, started(0, attempt=1)))
    now = T0.timestamp() + 1 + 36
    assert decide_start(state, 0, now=now, timeout=30, grace=5) == Begin(1, 2, abandoned=1)


def test_finish_of_the_live_attempt_retries_at_the_actual_version() -> None:
    state = fold_run(history(SUBMITTED, started(0), ("SomethingExternal", {})))
    assert decide_finish(state, 0, 1) == Finish(2)


def test_finish_of_a_superseded_attempt_is_dropped() -> None:
    state = fold_run(history(SUBMITTED, started(0, 1), started(0, 2)))
    assert decide_finish(state, 0, 1) == Drop("attempt superseded")


def test_finish_after_another_worker_completed_forwards_or_drops() -> None:
    state = fold_run(history(SUBMITTED, started(0), completed(0)))
    assert isinstance(decide_finish(state, 0, 1), Forward)
    state = fold_run(history(SUBMITTED, started(0), completed(0), started(1)))
    assert isinstance(decide_finish(state, 0, 1), Drop)
