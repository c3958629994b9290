"""The stage decision rules, folded from hand-built run histories (no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from stageline.actors.decide import (
    Begin,
    Defer,
    Drop,
    Finish,
    Forward,
    GiveUp,
    decide_finish,
    decide_start,
    fold_run,
    lost_too_often,
)
from stageline.events.envelope import RecordedEvent
from stageline.projections.run_status import RunStatus

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
    assert decide_start(state, 0, now=NOW, timeout=30) == Drop("run moved on")


def test_command_ahead_of_the_run_is_dropped() -> None:
    state = fold_run(history(SUBMITTED, started(0)))
    assert decide_start(state, 1, now=NOW, timeout=30) == Drop("run has not reached this stage")


def test_unfinished_attempt_within_its_timeout_is_deferred_not_doubled() -> None:
    state = fold_run(history(SUBMITTED, started(0)))
    now = T0.timestamp() + 1 + 10  # started at T0+1s, 10 s ago
    decision = decide_start(state, 0, now=now, timeout=30, grace=5)
    assert decision == Defer(T0.timestamp() + 1 + 30 + 5)


def test_unfinished_attempt_past_timeout_and_grace_is_abandoned_for_a_new_attempt() -> None:
    state = fold_run(history(SUBMITTED, started(0, attempt=1)))
    now = T0.timestamp() + 1 + 36
    assert decide_start(state, 0, now=now, timeout=30, grace=5) == Begin(1, 2, abandoned=1, lost=1)


def test_finish_of_the_live_attempt_retries_at_the_actual_version() -> None:
    state = fold_run(history(SUBMITTED, started(0), ("SomethingExternal", {})))
    assert decide_finish(state, 0, 1) == Finish(2)


def test_finish_of_a_superseded_attempt_is_dropped() -> None:
    state = fold_run(history(SUBMITTED, started(0, 1), started(0, 2)))
    assert decide_finish(state, 0, 1) == Drop("attempt superseded")


def failed(
    index: int, attempt: int, *, retry_at: datetime | None = None
) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {
        "stage": "s",
        "index": index,
        "attempt": attempt,
        "error_type": "E",
        "error": "e",
    }
    if retry_at is not None:
        data.update(will_retry=True, retry_at=retry_at)
    return ("StageFailed", data)


def test_scheduled_retry_command_begins_the_next_attempt() -> None:
    due = T0 + timedelta(hours=2)
    state = fold_run(history(SUBMITTED, started(0), failed(0, 1, retry_at=due)))
    assert decide_start(state, 0, attempt=2, now=NOW, timeout=30) == Begin(2, 2)


def test_stale_command_of_a_failed_attempt_waits_for_the_retry_time() -> None:
    due = T0 + timedelta(hours=2)
    state = fold_run(history(SUBMITTED, started(0), failed(0, 1, retry_at=due)))
    assert decide_start(state, 0, attempt=1, now=NOW, timeout=30) == Defer(due.timestamp())
    later = due.timestamp() + 1
    assert decide_start(state, 0, attempt=1, now=later, timeout=30) == Begin(2, 2)


def test_a_retry_time_stored_as_text_folds_as_that_time() -> None:
    """Logs written before times of known types were stored typed may hold the text."""
    due = T0 + timedelta(hours=2)
    for text, at in [
        (due.isoformat(), due.timestamp()),
        (due.replace(tzinfo=None).isoformat(), due.timestamp()),  # naive: UTC
        ("not a time", 0.0),  # due at once rather than a fold that fails for good
    ]:
        [*head, (topic, data)] = [SUBMITTED, started(0), failed(0, 1, retry_at=due)]
        state = fold_run(history(*head, (topic, {**data, "retry_at": text})))
        assert state.progress(0).retry_at == at, text


def test_stage_that_gave_up_is_dropped() -> None:
    state = fold_run(history(SUBMITTED, started(0), failed(0, 1)))
    assert decide_start(state, 0, now=NOW, timeout=30) == Drop("stage gave up")


def test_skip_moves_the_run_to_the_fallback_and_hands_on_if_needed() -> None:
    skipped = (
        "StageSkipped",
        {"stage": "a", "index": 0, "reason": "r", "next_stage": "b", "next_index": 1},
    )
    events = history(SUBMITTED, started(0), failed(0, 1), skipped)
    state = fold_run(events)
    assert state.cursor == 1
    decision = decide_start(state, 0, now=NOW, timeout=30)
    assert decision == Forward(1, 3, {"text": "x"}, str(events[3].event_id))


def test_cancelled_run_drops_every_command() -> None:
    state = fold_run(history(SUBMITTED, started(0), ("RunCancelled", {"reason": ""})))
    assert decide_start(state, 0, now=NOW, timeout=30) == Drop("run ended with RunCancelled")
    assert decide_finish(state, 0, 1) == Drop("run ended with RunCancelled")


def test_retried_run_begins_a_fresh_attempt_of_the_failed_stage() -> None:
    fail = ("RunFailed", {"stage": "s", "error_type": "E", "error": "e", "dead_letter": "d1"})
    retried = ("RunRetried", {"stage": "s", "index": 0, "attempt": 2})
    state = fold_run(history(SUBMITTED, started(0), failed(0, 1), fail))
    assert (state.terminal, state.dead_letter) == ("RunFailed", "d1")
    state = fold_run(history(SUBMITTED, started(0), failed(0, 1), fail, retried))
    assert (state.terminal, state.dead_letter) == (None, None)
    assert decide_start(state, 0, attempt=2, now=NOW, timeout=30) == Begin(4, 2)


def test_effects_are_tracked_per_stage_and_closed_by_compensation() -> None:
    events = history(SUBMITTED, started(0), ("EntityMentioned", {"entity": "Bob"}))
    events[2] = msgspec.structs.replace(events[2], causation_id=str(events[1].event_id))
    state = fold_run(events)
    assert [e.type for e in state.open_effects(0)] == ["EntityMentioned"]
    undo = ("EntityMentionRetracted", {"compensates": str(events[2].event_id)})
    state = fold_run([*events, *history(undo)[0:1]])
    assert state.open_effects(0) == []


def test_finish_after_another_worker_completed_forwards_or_drops() -> None:
    state = fold_run(history(SUBMITTED, started(0), completed(0)))
    assert isinstance(decide_finish(state, 0, 1), Forward)
    state = fold_run(history(SUBMITTED, started(0), completed(0), started(1)))
    assert isinstance(decide_finish(state, 0, 1), Drop)


def test_a_stage_whose_attempts_keep_being_lost_gives_up() -> None:
    lost = (
        "StageFailed",
        {
            "stage": "s",
            "index": 0,
            "attempt": 1,
            "error_type": "AttemptAbandoned",
            "error": "e",
            "will_retry": True,
        },
    )
    events = history(SUBMITTED, started(0, 1), lost, started(0, 2))
    state = fold_run(events)
    assert state.stages[0].abandoned == 1
    now = T0.timestamp() + 3 + 36
    assert decide_start(state, 0, now=now, timeout=30, grace=5, max_abandoned=2) == GiveUp(
        3, 2, str(events[3].event_id)
    )
    assert decide_start(state, 0, now=now, timeout=30, grace=5, max_abandoned=3) == Begin(
        3, 3, abandoned=2, lost=2
    )


def test_the_abandon_limit_counts_the_attempt_about_to_be_lost() -> None:
    # what decide_start gives up at, and a stopping worker leaves to be presumed lost
    assert [lost_too_often(lost, 3) for lost in range(4)] == [False, False, True, True]
    assert not lost_too_often(100, None)


def test_a_runs_status_is_the_one_the_run_status_view_shows() -> None:
    failed = ("StageFailed", {"stage": "s", "index": 0, "will_retry": True, "retry_at": None})
    retried = ("RunRetried", {"stage": "s", "index": 0, "attempt": 2})
    ended = ("RunFailed", {"stage": "s", "error_type": "E", "error": "e"})
    seen = [
        fold_run(history(*events)).status
        for events in (
            (SUBMITTED, started(0)),
            (SUBMITTED, started(0), failed),
            (SUBMITTED, started(0), failed, started(0, 2)),
            (SUBMITTED, started(0), failed, ended),
            (SUBMITTED, started(0), failed, ended, retried),
            (SUBMITTED, ("RunCancelled", {"reason": ""})),
            (SUBMITTED, ("RunCompleted", {})),
            (SUBMITTED, ("RunCompensated", {"stages": ["a", "b"]})),
        )
    ]
    assert seen == [
        "processing",
        "retrying",
        "processing",
        "failed",
        "processing",
        "cancelled",
        "completed",
        "compensated",
    ]
    assert set(seen) <= set(RunStatus)
