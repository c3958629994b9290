"""Compensation is pure: effects in, compensating events out, each naming what it reverses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from stageline.actors.builtin.flaky import FlakyEffectReverted, revert
from stageline.actors.builtin.memory import EntityMentionRetracted, retract_mentions
from stageline.actors.compensation import compensate, compensate_stage, undo_run
from stageline.actors.decide import fold_run
from stageline.actors.events import EffectCompensated, StageCompensated
from stageline.events.envelope import RecordedEvent

T = datetime(2026, 1, 1, tzinfo=UTC)


def event(
    version: int, type_: str, data: dict[str, Any], cause: str | None = None
) -> RecordedEvent:
    return RecordedEvent(
        event_id=uuid.uuid4(),
        type=type_,
        schema_version=1,
        stream="run-r",
        version=version,
        position=version + 1,
        workspace="w",
        occurred_at=T,
        recorded_at=T,
        correlation_id=None,
        causation_id=cause,
        data=data,
    )


def run_with_effects() -> list[RecordedEvent]:
    submitted = event(
        0, "RunSubmitted", {"pipeline": "p", "stages": ["normalize", "extract"], "input": {}}
    )
    s0 = event(1, "StageStarted", {"stage": "normalize", "index": 0})
    e0 = event(2, "MemoryNormalized", {"chars": 3}, cause=str(s0.event_id))
    c0 = event(3, "StageCompleted", {"stage": "normalize", "index": 0})
    s1 = event(4, "StageStarted", {"stage": "extract", "index": 1})
    m1 = event(
        5, "EntityMentioned", {"entity": "Bob", "entity_type": "person"}, cause=str(s1.event_id)
    )
    m2 = event(
        6, "EntityMentioned", {"entity": "Berlin", "entity_type": "place"}, cause=str(s1.event_id)
    )
    return [submitted, s0, e0, c0, s1, m1, m2]


def test_effects_without_a_compensator_get_the_generic_reversal() -> None:
    effect = event(0, "Charged", {"cents": 5})
    assert compensate([effect], None) == [
        EffectCompensated(compensates=str(effect.event_id), effect_type="Charged")
    ]


def test_stage_compensators_name_each_event_they_reverse() -> None:
    history = run_with_effects()
    retracted = retract_mentions(history[5:7])
    assert retracted == [
        EntityMentionRetracted(
            compensates=str(history[5].event_id), entity="Bob", entity_type="person"
        ),
        EntityMentionRetracted(
            compensates=str(history[6].event_id), entity="Berlin", entity_type="place"
        ),
    ]
    flaky = event(0, "FlakyEffectApplied", {"key": "k", "attempt": 1})
    assert revert([flaky]) == [FlakyEffectReverted(compensates=str(flaky.event_id), key="k")]


def test_undo_runs_last_stage_first_and_skips_stages_without_effects() -> None:
    history = run_with_effects()
    out = undo_run(fold_run(history), lambda i: retract_mentions if i == 1 else None)
    assert [type(e).__name__ for e in out] == [
        "StageCompensated",
        "EntityMentionRetracted",
        "EntityMentionRetracted",
        "StageCompensated",
        "EffectCompensated",
    ]
    first = out[0]
    assert isinstance(first, StageCompensated) and first.stage == "extract"
    assert first.compensates == [str(history[5].event_id), str(history[6].event_id)]


def test_already_compensated_effects_are_not_compensated_again() -> None:
    history = run_with_effects()
    state = fold_run(history)
    done = [event(7, "EntityMentionRetracted", {"compensates": str(history[5].event_id)})]
    state = fold_run([*history, *done])
    out = compensate_stage(state, 1, retract_mentions, reason="undo")
    assert [e.compensates for e in out if isinstance(e, EntityMentionRetracted)] == [
        str(history[6].event_id)
    ]
    assert compensate_stage(fold_run(history[:4]), 1, None, reason="undo") == []
