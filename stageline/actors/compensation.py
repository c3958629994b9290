"""Reversing a stage's effects with new events: pure, no I/O.

A stage's effects are the domain events its attempts recorded. A stage may
register a compensator that turns them into its own compensating events; a
stage without one gets a generic ``EffectCompensated`` per effect. Every
compensating event names the event it compensates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from stageline.actors.decide import RunState
from stageline.actors.events import EffectCompensated, StageCompensated
from stageline.actors.stage import Compensator
from stageline.events.envelope import DomainEvent, RecordedEvent


def compensate(
    effects: Sequence[RecordedEvent], compensator: Compensator | None
) -> list[DomainEvent]:
    """The events that reverse ``effects``."""
    if not effects:
        return []
    if compensator is None:
        return [EffectCompensated(compensates=str(e.event_id), effect_type=e.type) for e in effects]
    return compensator(effects)


def compensate_stage(
    state: RunState,
    index: int,
    compensator: Compensator | None,
    *,
    reason: str,
    extra: Sequence[RecordedEvent] = (),
) -> list[DomainEvent]:
    """``StageCompensated`` plus the reversal of the stage's still-open effects, or nothing."""
    effects = [*state.open_effects(index), *extra]
    if not effects:
        return []
    name = state.stage_names[index] if index < len(state.stage_names) else str(index)
    return [
        StageCompensated(
            stage=name, index=index, compensates=[str(e.event_id) for e in effects], reason=reason
        ),
        *compensate(effects, compensator),
    ]


def undo_run(
    state: RunState, compensator_of: Callable[[int], Compensator | None]
) -> list[DomainEvent]:
    """Compensations for every stage with open effects, last stage first."""
    out: list[DomainEvent] = []
    for index in sorted(state.stages, reverse=True):
        out.extend(compensate_stage(state, index, compensator_of(index), reason="undo"))
    return out
