"""One attempt at a stage, and what it records: pure, no I/O.

An ``Attempt`` carries a stage command through a batch: its outcome once run,
then the events to append at its run's version and what follows once they are
recorded (the next stage's command, or the time the same stage comes back).
The functions here plan those events from the outcome; the caller passes in
the clock's reading, the run's state and the stage's compensator, and does the
reading and appending itself.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from stageline.actors.commands import StageCommand
from stageline.actors.compensation import CompensationFailed, compensate_stage
from stageline.actors.decide import ABANDONED_ERROR, RunState
from stageline.actors.events import (
    RunCompleted,
    RunFailed,
    StageCompleted,
    StageFailed,
    StageSkipped,
    StageStarted,
)
from stageline.actors.pipeline import Pipeline, StageSpec
from stageline.actors.retry import next_delay
from stageline.actors.stage import (
    MAX_ERROR_CHARS,
    Compensator,
    InvalidResult,
    StageError,
    StageResult,
)
from stageline.errors import InvalidArgument
from stageline.events.envelope import DomainEvent, NewEvent, RecordedEvent, new_event
from stageline.events.finite import nonfinite

ABANDONED = "no result within the stage timeout; worker presumed lost"
STOPPED = "worker stopped with the attempt in hand"
INTERRUPTED = "interrupted: a notice said its run had stopped, but the run went on"


class AttemptAbandoned(Exception):  # its name is decide.ABANDONED_ERROR
    """An attempt lost with its worker: presumed lost, or dropped by a worker that stopped."""


@dataclass
class Attempt:
    """One attempt at a command's stage: its outcome, then what it records and what follows."""

    command: StageCommand
    pipeline: Pipeline
    spec: StageSpec
    attempt: int
    version: int
    started_id: str
    outcome: StageResult | BaseException | None = None
    duration_ms: float = 0.0
    events: list[NewEvent] = field(default_factory=list)
    opening: list[NewEvent] = field(default_factory=list)  # StageStarted, if not yet recorded
    hand_on: StageCommand | None = None  # sent once the result is recorded
    retry_at: float | None = None  # or: the same stage comes back then
    lost: int = 0
    """The stage's attempts before this one lost with their workers (not its failures)."""
    compensating: bool = False
    """Its events include compensating ones (a give-up with effects to reverse)."""


def stage_event(
    payload: DomainEvent,
    command: StageCommand,
    cause: str | None = None,
    *,
    event_id: uuid.UUID | None = None,
) -> NewEvent:
    """``payload`` as an event of ``command``'s run, caused by ``cause`` (or the command's)."""
    return new_event(
        payload,
        event_id=event_id,
        correlation_id=command.correlation_id,
        causation_id=cause if cause is not None else command.cause,
    )


def started_event(
    command: StageCommand, spec: StageSpec, attempt: int, cause: str | None = None
) -> NewEvent:
    """The ``StageStarted`` of ``attempt`` at ``command``'s stage, caused by ``cause`` (or
    the command's)."""
    started = StageStarted(stage=spec.name, index=command.index, attempt=attempt)
    return stage_event(started, command, cause)


def abandoned_event(command: StageCommand, spec: StageSpec, attempt: int) -> NewEvent:
    """The ``StageFailed`` of a lost ``attempt``, recorded before the stage starts again."""
    failed = StageFailed(
        stage=spec.name,
        index=command.index,
        attempt=attempt,
        error_type=ABANDONED_ERROR,
        error=ABANDONED,
        will_retry=True,
    )
    return stage_event(failed, command)


def check_outcome(a: Attempt) -> None:
    """Replace an outcome that could not be recorded as it is with the permanent failure
    saying why, so that it fails its attempt rather than the batch.

    A result's output and metadata must be mappings with string keys, and its events (or a
    ``StageError``'s) ``DomainEvent``s, none of them holding a number JSON cannot carry
    (NaN, infinity: the log would keep it, the HTTP API serve it as null). What cannot be
    encoded at all is found by the append, as the store encodes it.
    """
    outcome = a.outcome
    if isinstance(outcome, StageResult):
        try:
            problem = _result_problem(outcome)
        except RecursionError:
            problem = "returned a StageResult nested too deeply to be stored"
    elif isinstance(outcome, StageError):
        try:
            problem = _events_problem(outcome.events, "raised a StageError whose events hold")
        except RecursionError:
            problem = "raised a StageError whose events are nested too deeply to be stored"
        if problem is None and outcome.events:
            try:  # a compensator is handed them as recorded events (rare: failures only)
                msgspec.to_builtins(outcome.events)
            except (TypeError, ValueError, OverflowError) as exc:
                problem = f"raised a StageError whose events cannot be encoded: {exc}"
        if problem is not None:
            problem += f"; its error: {_describe(outcome)[1]}"
    elif isinstance(outcome, BaseException):
        return
    else:  # what the actor returned (None, a plain dict): the same code returns it again
        problem = f"returned {type(outcome).__name__}, not a StageResult"
    if problem is not None:
        a.outcome = InvalidResult(f"actor {a.spec.actor!r} {problem}", stage=a.spec.name)


def _result_problem(result: StageResult) -> str | None:
    for name in ("output", "metadata"):
        value = getattr(result, name)
        if not isinstance(value, dict):
            return f"returned a StageResult whose {name} is a {type(value).__name__}, not a dict"
        for key in value:
            if not isinstance(key, str):
                return (
                    f"returned a StageResult whose {name} has a key of type "
                    f"{type(key).__name__} ({key!r}): keys must be strings"
                )
        problem = nonfinite(value, name)
        if problem is not None:
            return f"returned {problem}"
    if not isinstance(result.events, list):
        return f"returned a StageResult whose events are a {type(result.events).__name__}"
    return _events_problem(result.events, "returned a StageResult whose events hold")


def _events_problem(events: object, what: str) -> str | None:
    if not isinstance(events, list):
        return f"{what} a {type(events).__name__}, not a list"
    for e in events:
        if not isinstance(e, DomainEvent):
            return f"{what} a {type(e).__name__}, not a DomainEvent"
    for i, e in enumerate(events):
        problem = nonfinite(e, f"events[{i}]", f" (a {e.topic})")
        if problem is not None:
            return f"{what} {problem}"
    return None


def retry_delay(a: Attempt) -> float | None:
    """Seconds until a failed attempt's stage is tried again, or None: it gives up.

    Attempts lost with their workers do not count: a redeploy does not use up retries."""
    if isinstance(a.outcome, AttemptAbandoned):  # decided, not retried
        return None
    return next_delay(a.attempt - a.lost, _permanent(a.outcome), a.spec.retry)


def plan_retry(a: Attempt, retry_at: float) -> None:
    """Plan a failed attempt's events: the stage comes back at ``retry_at``."""
    a.retry_at = retry_at
    a.events = [_failed(a, will_retry=True), *_effects(a)]


def plan_stopped(a: Attempt, now: float, why: str = STOPPED) -> None:
    """Plan the events of an attempt its worker dropped as it stopped (or interrupted, told
    its run had stopped): abandoned, as a lost attempt is (it counts as one, not as one of
    the stage's failures), and due again at ``now``, so that another worker starts the next
    attempt at once."""
    a.outcome = AttemptAbandoned(why)
    plan_retry(a, now)


def plan_success(a: Attempt, result: StageResult) -> None:
    """Plan a successful attempt's events and hand the run on to the next stage."""
    c, spec = a.command, a.spec
    completed = stage_event(
        StageCompleted(
            stage=spec.name,
            index=c.index,
            attempt=a.attempt,
            duration_ms=a.duration_ms,
            output=result.output,
            metadata=result.metadata,
        ),
        c,
        a.started_id,
    )
    a.events = [completed, *(stage_event(e, c, a.started_id) for e in result.events)]
    item = {**c.item, **result.output}
    _continue_at(a, c.index + 1, item, str(completed.event_id))


def plan_give_up(
    a: Attempt,
    state: RunState,
    compensator: Compensator | None,
    *,
    uncompensated: CompensationFailed | None = None,
) -> None:
    """Plan the events of an attempt whose stage gives up: its effects compensated, then
    the run failed, or carried on at the stage's fallback.

    If the compensation fails (the compensator raises or returns no list of events, or
    ``uncompensated`` says its events could not be stored), the effects stay as they are
    and the run fails into the dead letters whatever the fallback, its ``RunFailed``
    saying why the stage failed and why its compensation did.
    """
    c, spec = a.command, a.spec
    failed = _failed(a, will_retry=False)
    effects = _effects(a)
    compensations: list[DomainEvent] = []
    if uncompensated is None:
        try:
            compensations = compensate_stage(
                state,
                c.index,
                compensator,
                reason="retries_exhausted",
                extra=[_recorded(e, c.workspace) for e in effects],
            )
        except CompensationFailed as exc:
            uncompensated = exc
    a.events = [failed, *effects, *(stage_event(e, c, a.started_id) for e in compensations)]
    a.compensating = bool(compensations)
    # a fallback goes on as if the stage had left nothing behind: not so with its effects
    fallback = spec.retry.fallback if uncompensated is None else None
    if fallback is None:
        error_type, message = _describe(a.outcome)
        if uncompensated is not None:
            message = f"{message[: MAX_ERROR_CHARS // 2]}; then {uncompensated.message}"
            message = message[:MAX_ERROR_CHARS]
        dead_letter = uuid.uuid4()
        a.events.append(
            stage_event(
                RunFailed(
                    stage=spec.name,
                    error_type=error_type,
                    error=message,
                    dead_letter=str(dead_letter),
                ),
                c,
                str(failed.event_id),
                event_id=dead_letter,
            )
        )
        return
    target = c.index + 1 if fallback == "skip" else a.pipeline.stage_names.index(fallback)
    skipped = stage_event(
        StageSkipped(
            stage=spec.name,
            index=c.index,
            reason=f"retries exhausted; fallback {fallback}",
            next_stage=a.pipeline.stage_names[target] if target < len(a.pipeline.stages) else None,
            next_index=target,
        ),
        c,
        str(failed.event_id),
    )
    a.events.append(skipped)
    _continue_at(a, target, dict(c.item), str(skipped.event_id))


def _continue_at(a: Attempt, index: int, item: dict[str, Any], cause: str) -> None:
    """After this attempt's events, the run goes on at ``index`` (or completes)."""
    c = a.command
    if index >= len(a.pipeline.stages):
        a.events.append(stage_event(RunCompleted(), c, cause))
    else:
        a.hand_on = c.to(index, -1, item, cause)


def _failed(a: Attempt, *, will_retry: bool) -> NewEvent:
    error_type, message = _describe(a.outcome)
    return stage_event(
        StageFailed(
            stage=a.spec.name,
            index=a.command.index,
            attempt=a.attempt,
            error_type=error_type,
            error=message,
            duration_ms=a.duration_ms,
            will_retry=will_retry,
            retry_at=datetime.fromtimestamp(a.retry_at, UTC) if will_retry and a.retry_at else None,
            permanent=_permanent(a.outcome),
        ),
        a.command,
        a.started_id,
    )


def _effects(a: Attempt) -> list[NewEvent]:
    """Effects a failed attempt reported before failing: recorded so they can be undone."""
    if isinstance(a.outcome, StageError):
        return [stage_event(e, a.command, a.started_id) for e in a.outcome.events]
    return []


def _permanent(outcome: object) -> bool:
    """Whether a failure can never succeed on retry (unstorable output never will)."""
    if isinstance(outcome, StageError):
        return outcome.permanent
    return isinstance(outcome, InvalidArgument)


def _describe(outcome: object) -> tuple[str, str]:
    error = outcome if isinstance(outcome, BaseException) else RuntimeError("no outcome")
    try:
        message = str(error)
    except Exception as exc:  # the actor's own exception class: its failure is the run's
        message = f"(its message could not be read: {type(exc).__name__})"
    return type(error).__name__, message[:MAX_ERROR_CHARS]


def _recorded(event: NewEvent, workspace: str) -> RecordedEvent:
    """A not-yet-appended effect, shaped like a recorded one for compensators."""
    data = event.data if isinstance(event.data, dict) else msgspec.to_builtins(event.data)
    return RecordedEvent(
        event_id=event.event_id,
        type=event.type,
        schema_version=event.schema_version,
        stream="",
        version=-1,
        position=0,
        workspace=workspace,
        occurred_at=event.occurred_at,
        recorded_at=event.occurred_at,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        data=data,
    )
