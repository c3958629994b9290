"""What a stage actor does with a command, decided from the run's own history.

Pure: no I/O. The runtime appends optimistically at the command's version;
only when that clashes does it read the run, fold it here, and ask what to do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stageline.actors.events import (
    RUN_TERMINAL,
    RunSubmitted,
    StageCompleted,
    StageFailed,
    StageStarted,
)
from stageline.events.envelope import RecordedEvent

ABANDON_GRACE_SECONDS = 5.0
"""An unfinished attempt is presumed lost this long after its timeout has passed."""


@dataclass
class StageProgress:
    attempt: int = 0
    started_at: float = 0.0
    finished: bool = False
    completed: bool = False
    completed_by: str | None = None


@dataclass
class RunState:
    """A run folded from its stream: enough to decide any stage command."""

    version: int = -1
    pipeline: str | None = None
    item: dict[str, Any] = field(default_factory=dict)
    stages: dict[int, StageProgress] = field(default_factory=dict)
    terminal: str | None = None

    def progress(self, index: int) -> StageProgress:
        return self.stages.setdefault(index, StageProgress())


def fold_run(events: Iterable[RecordedEvent]) -> RunState:
    state = RunState()
    for e in events:
        state.version = e.version
        t, d = e.type, e.data
        if t == RunSubmitted.topic:
            state.pipeline = d["pipeline"]
            state.item = dict(d["input"])
        elif t == StageStarted.topic:
            p = state.progress(d["index"])
            p.attempt = max(p.attempt, d.get("attempt", 1))
            p.started_at = e.recorded_at.timestamp()
            p.finished = False
        elif t == StageCompleted.topic:
            p = state.progress(d["index"])
            p.finished = p.completed = True
            p.completed_by = str(e.event_id)
            state.item.update(d.get("output") or {})
        elif t == StageFailed.topic:
            state.progress(d["index"]).finished = True
        elif t in RUN_TERMINAL:
            state.terminal = t
    return state


@dataclass(frozen=True)
class Drop:
    """Nothing to do: the transition is recorded already, or the run is over."""

    reason: str


@dataclass(frozen=True)
class Forward:
    """The stage completed but the next one never began: hand the run on again."""

    next_index: int
    version: int
    item: dict[str, Any]
    cause: str | None


@dataclass(frozen=True)
class Begin:
    """Start ``attempt`` at ``version``; ``abandoned`` names an attempt presumed lost."""

    version: int
    attempt: int
    abandoned: int | None = None


@dataclass(frozen=True)
class Defer:
    """An attempt may still be running elsewhere: look again at ``until`` (epoch seconds)."""

    until: float


@dataclass(frozen=True)
class Finish:
    """Our attempt is still the live one: record its result at ``version``."""

    version: int


def _after_completion(state: RunState, index: int) -> Drop | Forward:
    if index + 1 in state.stages:
        return Drop("stage completed and handed on")
    p = state.stages[index]
    return Forward(index + 1, state.version, dict(state.item), p.completed_by)


def decide_start(
    state: RunState,
    index: int,
    *,
    now: float,
    timeout: float,
    grace: float = ABANDON_GRACE_SECONDS,
) -> Drop | Forward | Begin | Defer:
    """Decide a command whose start append clashed with the run's actual version."""
    if state.version < 0:
        return Drop("no such run")
    if state.terminal:
        return Drop(f"run ended with {state.terminal}")
    p = state.stages.get(index)
    if p is not None and p.completed:
        return _after_completion(state, index)
    if index > 0:
        prev = state.stages.get(index - 1)
        if prev is None or not prev.completed:
            return Drop("previous stage has not completed")
    if p is None or p.attempt == 0:
        return Begin(state.version, 1)
    if p.finished:
        return Drop("stage attempt failed")
    deadline = p.started_at + timeout + grace
    if now < deadline:
        return Defer(deadline)
    return Begin(state.version, p.attempt + 1, abandoned=p.attempt)


def decide_finish(state: RunState, index: int, attempt: int) -> Drop | Forward | Finish:
    """Decide an attempt whose result append clashed with the run's actual version."""
    if state.terminal:
        return Drop(f"run ended with {state.terminal}")
    p = state.stages.get(index)
    if p is not None and p.completed:
        return _after_completion(state, index)
    if p is None or p.attempt != attempt or p.finished:
        return Drop("attempt superseded")
    return Finish(state.version)
