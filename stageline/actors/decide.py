"""What a stage actor does with a command, decided from the run's own history.

Pure: no I/O. The runtime appends optimistically at the command's version;
only when that clashes does it read the run, fold it here, and ask what to do.
The same fold tells run operations (undo, retry, cancel) where a run stands.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stageline.actors.events import (
    RUN_TERMINAL,
    RunCancelled,
    RunCompensated,
    RunCompleted,
    RunFailed,
    RunRetried,
    RunSubmitted,
    StageCompensated,
    StageCompleted,
    StageFailed,
    StageSkipped,
    StageStarted,
)
from stageline.events.envelope import RecordedEvent

ABANDON_GRACE_SECONDS = 5.0
"""An unfinished attempt is presumed lost this long after its timeout has passed."""

ABANDONED_ERROR = "AttemptAbandoned"
"""``StageFailed.error_type`` of an attempt whose worker was lost."""

DEAD_LETTER_CLOSED = frozenset({"DeadLetterRedriven", "DeadLetterDiscarded"})

_ENDED_AS = {
    RunCompleted.topic: "completed",
    RunFailed.topic: "failed",
    RunCancelled.topic: "cancelled",
    RunCompensated.topic: "compensated",
}


@dataclass
class StageProgress:
    attempt: int = 0
    started_at: float = 0.0
    started_id: str | None = None
    abandoned: int = 0
    in_flight: bool = False
    completed: bool = False
    retry_at: float | None = None
    gave_up: bool = False
    skipped: bool = False
    effects: list[RecordedEvent] = field(default_factory=list)


@dataclass
class RunState:
    """A run folded from its stream: enough to decide any stage command or run operation."""

    version: int = -1
    pipeline: str | None = None
    pipeline_version: int = 1
    stage_names: list[str] = field(default_factory=list)
    item: dict[str, Any] = field(default_factory=dict)
    stages: dict[int, StageProgress] = field(default_factory=dict)
    cursor: int = 0
    cursor_cause: str | None = None
    terminal: str | None = None
    dead_letter: str | None = None
    correlation_id: str | None = None
    compensated: set[str] = field(default_factory=set)
    retrying: bool = False
    """A failed attempt waits for its retry (until the next ``StageStarted``)."""

    @property
    def status(self) -> str:
        """The run's status as the run-status view shows it (``RunStatus``'s values)."""
        if self.terminal:
            return _ENDED_AS[self.terminal]
        return "retrying" if self.retrying else "processing"

    def progress(self, index: int) -> StageProgress:
        return self.stages.setdefault(index, StageProgress())

    def open_effects(self, index: int) -> list[RecordedEvent]:
        """The stage's recorded effects that no compensation has reversed yet."""
        p = self.stages.get(index)
        return [e for e in p.effects if str(e.event_id) not in self.compensated] if p else []


def _epoch(value: Any) -> float:
    """A retry time in epoch seconds: a datetime, or the RFC 3339 text a log written before
    known types were stored typed may hold (naive is UTC). Anything else is due at once:
    a fold that fails would stop the run for good."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return 0.0
    if not isinstance(value, datetime):
        return 0.0
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def fold_run(events: Iterable[RecordedEvent]) -> RunState:
    state = RunState()
    attempt_of: dict[str, int] = {}  # StageStarted event id -> stage index
    for e in events:
        state.version = e.version
        t, d = e.type, e.data
        if t == RunSubmitted.topic:
            state.pipeline = d["pipeline"]
            state.pipeline_version = d.get("pipeline_version", 1)
            state.stage_names = list(d.get("stages", []))
            state.item = dict(d["input"])
            state.correlation_id = e.correlation_id
            state.cursor_cause = str(e.event_id)
        elif t == StageStarted.topic:
            p = state.progress(d["index"])
            p.attempt = max(p.attempt, d.get("attempt", 1))
            p.started_at = e.recorded_at.timestamp()
            p.started_id = str(e.event_id)
            p.in_flight, p.retry_at, p.gave_up = True, None, False
            state.retrying = False
            attempt_of[str(e.event_id)] = d["index"]
        elif t == StageCompleted.topic:
            p = state.progress(d["index"])
            p.in_flight, p.completed = False, True
            state.item.update(d.get("output") or {})
            state.cursor, state.cursor_cause = d["index"] + 1, str(e.event_id)
        elif t == StageFailed.topic:
            p = state.progress(d["index"])
            p.in_flight = False
            if d.get("error_type") == ABANDONED_ERROR:
                p.abandoned += 1
            if d.get("will_retry"):
                p.retry_at = _epoch(d.get("retry_at"))
                state.retrying = True
                state.cursor_cause = str(e.event_id)  # the next attempt follows from it
            else:
                p.gave_up = True
        elif t == StageSkipped.topic:
            state.progress(d["index"]).skipped = True
            state.cursor, state.cursor_cause = d["next_index"], str(e.event_id)
        elif t == RunRetried.topic:
            p = state.progress(d["index"])
            p.gave_up, p.retry_at = False, 0.0
            state.terminal, state.dead_letter, state.retrying = None, None, False
            state.cursor, state.cursor_cause = d["index"], str(e.event_id)
        elif t in RUN_TERMINAL:
            state.terminal = t
            if t == RunFailed.topic:
                state.dead_letter = d.get("dead_letter")
        elif t in DEAD_LETTER_CLOSED:
            state.dead_letter = None
        if t == StageCompensated.topic:
            state.compensated.update(d.get("compensates", []))
        elif isinstance(d.get("compensates"), str):
            state.compensated.add(d["compensates"])
        elif e.causation_id in attempt_of and not t.startswith(("Stage", "Run")):
            state.progress(attempt_of[e.causation_id]).effects.append(e)
    return state


@dataclass(frozen=True)
class Drop:
    """Nothing to do: the transition is recorded already, or the run is over."""

    reason: str


@dataclass(frozen=True)
class Forward:
    """The run moved to a stage that never got its command: hand the run on again."""

    next_index: int
    version: int
    item: dict[str, Any]
    cause: str | None


@dataclass(frozen=True)
class Begin:
    """Start ``attempt`` at ``version``; ``abandoned`` names an attempt presumed lost, and
    ``lost`` counts the stage's attempts lost before this one (that one too)."""

    version: int
    attempt: int
    abandoned: int | None = None
    lost: int = 0


@dataclass(frozen=True)
class GiveUp:
    """Too many attempts of this stage were lost with their workers: give up at ``version``.

    Without this a command that kills every worker that runs it would be
    abandoned and started again forever.
    """

    version: int
    attempt: int
    started_id: str | None


@dataclass(frozen=True)
class Defer:
    """An attempt may still be running, or a retry is not due: look again at ``until``."""

    until: float


@dataclass(frozen=True)
class Finish:
    """Our attempt is still the live one: record its result at ``version``."""

    version: int


def _moved_on(state: RunState) -> Drop | Forward:
    """The command's stage is behind the run: make sure the run's own stage has its command."""
    current = state.stages.get(state.cursor)
    if state.cursor >= len(state.stage_names) or (
        current is not None and (current.attempt or current.retry_at is not None)
    ):
        return Drop("run moved on")
    return Forward(state.cursor, state.version, dict(state.item), state.cursor_cause)


def lost_too_often(lost: int, max_abandoned: int | None) -> bool:
    """Whether a stage whose attempts were lost with their workers ``lost`` times gives up
    when one more is lost: ``max_abandoned`` lost attempts, that one included, are too many
    (None: no limit)."""
    return max_abandoned is not None and lost + 1 >= max_abandoned


def decide_start(
    state: RunState,
    index: int,
    *,
    attempt: int = 1,
    now: float,
    timeout: float,
    grace: float = ABANDON_GRACE_SECONDS,
    max_abandoned: int | None = None,
) -> Drop | Forward | Begin | Defer | GiveUp:
    """Decide a command whose start append clashed with the run's actual version.

    A lost attempt is the worker's failure, not the stage's, so it does not use up
    the stage's retries; but after ``max_abandoned`` lost attempts the stage gives
    up (a command that kills every worker running it must not loop forever).
    """
    if state.version < 0:
        return Drop("no such run")
    if state.terminal:
        return Drop(f"run ended with {state.terminal}")
    if index > state.cursor:
        return Drop("run has not reached this stage")
    if index < state.cursor:
        return _moved_on(state)
    p = state.stages.get(index)
    if p is None or p.attempt == 0:
        return Begin(state.version, 1)
    if p.in_flight:
        deadline = p.started_at + timeout + grace
        if now < deadline:
            return Defer(deadline)
        if lost_too_often(p.abandoned, max_abandoned):
            return GiveUp(state.version, p.attempt, p.started_id)
        return Begin(state.version, p.attempt + 1, abandoned=p.attempt, lost=p.abandoned + 1)
    if p.retry_at is not None:
        if attempt > p.attempt or now >= p.retry_at:
            return Begin(state.version, p.attempt + 1, lost=p.abandoned)
        return Defer(p.retry_at)
    return Drop("stage gave up")


def decide_finish(state: RunState, index: int, attempt: int) -> Drop | Forward | Finish:
    """Decide an attempt whose result append clashed with the run's actual version."""
    if state.terminal:
        return Drop(f"run ended with {state.terminal}")
    if index < state.cursor:
        return _moved_on(state)
    p = state.stages.get(index)
    if p is None or p.attempt != attempt or not p.in_flight:
        return Drop("attempt superseded")
    return Finish(state.version)
