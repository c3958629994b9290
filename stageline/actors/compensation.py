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
from stageline.actors.stage import MAX_ERROR_CHARS, Compensator
from stageline.errors import Conflict
from stageline.events.envelope import DomainEvent, RecordedEvent

_MAX_ERROR_CHARS = MAX_ERROR_CHARS // 2
"""A compensator's error is cut to half: it is told after the stage's own in one message."""


class CompensationFailed(Conflict):
    """A stage's compensator raised, or returned something that is not a list of
    ``DomainEvent``s: its effects cannot be reversed as the run stands (nothing was
    appended for it)."""

    def __init__(self, stage: str, error_type: str, error: str) -> None:
        super().__init__(
            f"compensating stage {stage!r} failed: {error_type}: {error}",
            stage=stage,
            error_type=error_type,
        )
        self.stage = stage
        self.error_type = error_type
        self.error = error


def compensate(
    effects: Sequence[RecordedEvent], compensator: Compensator | None, *, stage: str = ""
) -> list[DomainEvent]:
    """The events that reverse ``effects``; ``CompensationFailed`` (naming ``stage``) if the
    compensator raises or returns anything but a list of ``DomainEvent``s."""
    if not effects:
        return []
    if compensator is None:
        return [EffectCompensated(compensates=str(e.event_id), effect_type=e.type) for e in effects]
    try:
        events = compensator(effects)
    except Exception as exc:  # the actor's code: its failure is this run's, said as it is
        raise CompensationFailed(stage, type(exc).__name__, _text(exc)) from exc
    if not isinstance(events, list):
        raise CompensationFailed(
            stage, "TypeError", f"returned a {type(events).__name__}, not a list of events"
        )
    for e in events:
        if not isinstance(e, DomainEvent):
            raise CompensationFailed(
                stage, "TypeError", f"returned a list holding a {type(e).__name__}, not an event"
            )
    return events


def _text(exc: Exception) -> str:
    try:
        return str(exc)[:_MAX_ERROR_CHARS]
    except Exception as unreadable:
        return f"(its message could not be read: {type(unreadable).__name__})"


def compensate_stage(
    state: RunState,
    index: int,
    compensator: Compensator | None,
    *,
    reason: str,
    extra: Sequence[RecordedEvent] = (),
) -> list[DomainEvent]:
    """``StageCompensated`` plus the reversal of the stage's still-open effects, or nothing;
    ``CompensationFailed`` if the stage's compensator fails."""
    effects = [*state.open_effects(index), *extra]
    if not effects:
        return []
    name = state.stage_names[index] if index < len(state.stage_names) else str(index)
    return [
        StageCompensated(
            stage=name, index=index, compensates=[str(e.event_id) for e in effects], reason=reason
        ),
        *compensate(effects, compensator, stage=name),
    ]


def undo_run(
    state: RunState, compensator_of: Callable[[int], Compensator | None]
) -> list[DomainEvent]:
    """Compensations for every stage with open effects, last stage first;
    ``CompensationFailed`` for the first stage whose compensator fails."""
    out: list[DomainEvent] = []
    for index in sorted(state.stages, reverse=True):
        out.extend(compensate_stage(state, index, compensator_of(index), reason="undo"))
    return out
