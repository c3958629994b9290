"""What a run stream takes from outside: the rules an append to ``run-<id>`` over HTTP
(``POST /v1/streams/{stream}/events``) or the ingest channel must keep.

A system reporting its own pipeline's run (``stageline.client``'s ``report``, or by
hand) appends the run's lifecycle as stageline's own runs have it; these rules keep
that history one that ``fold_run`` and the run-status view can read, and keep
outside systems away from the runs stageline drives. Checked against the run's
stream as it is, each event of an append against what the ones before it left:

1. A run stream starts with ``RunSubmitted``, and has one.
2. A ``RunSubmitted`` from outside reports a run: ``pipeline_version`` 0
   (``REPORTED_VERSION``), and one or more distinct stage names. A run stageline
   is to drive is submitted with ``POST /v1/runs``.
3. A run stageline drives (any other ``pipeline_version``) takes nothing from outside.
4. An ended run (``RunCompleted``, ``RunFailed``, ``RunCancelled``,
   ``RunCompensated``) takes nothing from outside: only the run operations append
   to it.
5. Of stageline's run events, a report appends only ``REPORTED_TYPES``; the others
   (``RunCancelled``, ``RunCompensated``, ``RunRetried``, ``StageSkipped``, ...) are
   appended by stageline itself (the run operations).
6. A stage event names one of the run's stages, with its index (``stages[index]``).
7. ``StageStarted`` starts a stage's next attempt (1, then one more than the last),
   of a stage not completed whose last attempt has its result.
8. ``StageCompleted`` / ``StageFailed`` end the stage's running attempt: one started
   with that attempt number that has no result yet.
9. ``RunCompleted`` needs every stage completed; ``RunCompleted`` and ``RunFailed``
   need no stage running (record its result first), and ``RunFailed`` names one of
   the run's stages, or none (``""``: the run failed before any stage started).

Events of other types (the reporter's own domain events) go into a submitted run
that has not ended. An event whose ``event_id`` the stream holds already is a
duplicate the store drops (a retry): it is not checked again.

Pure: no I/O. ``stageline.actors.outside`` reads the stream, checks, and appends at
the version it checked against.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from stageline.actors import events as run_events
from stageline.actors.events import (
    REPORTED_VERSION,
    RUN_TERMINAL,
    RunCompleted,
    RunFailed,
    RunRetried,
    RunSubmitted,
    StageCompleted,
    StageFailed,
    StageStarted,
)
from stageline.errors import Conflict
from stageline.events.envelope import DomainEvent, NewEvent, RecordedEvent

__all__ = ["REPORTED_TYPES", "ReportedRun"]

REPORTED_TYPES = frozenset(
    t.topic
    for t in (RunSubmitted, StageStarted, StageCompleted, StageFailed, RunCompleted, RunFailed)
)
"""The run events a report appends."""

_OWN_TYPES = frozenset(
    v.topic
    for v in vars(run_events).values()
    if isinstance(v, type) and issubclass(v, DomainEvent) and v is not DomainEvent
)
"""Every run event type stageline defines (``stageline.actors.events``)."""

_STAGE_TYPES = frozenset({StageStarted.topic, StageCompleted.topic, StageFailed.topic})


@dataclass
class ReportedRun:
    """A run stream as the rules see it, folded from its events."""

    stream: str
    version: int = -1
    ids: set[uuid.UUID] = field(default_factory=set)
    submitted: bool = False
    driven: bool = False
    stages: list[str] = field(default_factory=list)
    ended: str | None = None
    attempts: dict[int, int] = field(default_factory=dict)
    """Stage index -> its last attempt started."""
    running: set[int] = field(default_factory=set)
    completed: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, stream: str, history: Iterable[RecordedEvent]) -> ReportedRun:
        run = cls(stream)
        for e in history:
            run.version = e.version
            run.ids.add(e.event_id)
            run._apply(e.type, e.data if isinstance(e.data, dict) else {})
        return run

    def take(self, events: Sequence[NewEvent]) -> int:
        """Check an append from outside against the rules, and fold it in: the number of
        its events the stream does not hold yet. ``Conflict`` naming the rule broken (and
        the run unchanged) if one is."""
        after = copy.deepcopy(self)
        fresh = 0
        for i, e in enumerate(events):
            if e.event_id in after.ids:
                continue
            data = _data(e.data)
            broken = after._broken(e.type, data)
            if broken is not None:
                rule, message = broken
                raise Conflict(
                    f"events[{i}]: {e.type} refused: {message}",
                    stream=self.stream,
                    index=i,
                    rule=rule,
                )
            after.ids.add(e.event_id)
            after._apply(e.type, data)
            fresh += 1
        after.version += fresh
        self.__dict__.update(after.__dict__)
        return fresh

    def _broken(self, t: str, d: dict[str, Any]) -> tuple[str, str] | None:
        """The rule (a short name) event ``t`` with data ``d`` breaks, and why; None if none."""
        if t == RunSubmitted.topic:
            if self.version >= 0:
                return "one-submit", "the run stream has events already; a run is submitted once"
            if d.get("pipeline_version") != REPORTED_VERSION:
                return "reported-only", (
                    f"pipeline_version must be {REPORTED_VERSION} (a run reported from "
                    "outside); to have stageline run a pipeline, use POST /v1/runs"
                )
            stages = d.get("stages", [])
            if not stages or len(set(stages)) != len(stages):
                return "stage-names", f"stages must be distinct names, at least one: {stages!r}"
            return None
        if not self.submitted:
            return "submitted-first", "a run stream starts with RunSubmitted"
        if self.driven:
            return "driven", (
                "stageline drives this run; only it appends the run's events (cancel, retry "
                "or undo it with POST /v1/runs/{id}/cancel, /retry or /undo)"
            )
        if self.ended is not None:
            return "ended", f"the run has ended ({self.ended}); it takes nothing more"
        if t in _OWN_TYPES and t not in REPORTED_TYPES:
            return "own-type", (
                f"{t} is appended by stageline itself; a report appends "
                f"{', '.join(sorted(REPORTED_TYPES))}"
            )
        if t in _STAGE_TYPES:
            return self._stage_broken(t, d)
        running = [self.stages[i] for i in sorted(self.running)]
        if t == RunCompleted.topic:
            pending = [s for i, s in enumerate(self.stages) if i not in self.completed]
            if pending:
                return "stages-done", f"stages {pending} have not completed"
        if t in (RunCompleted.topic, RunFailed.topic) and running:
            return "stages-done", f"stages {running} are still running: record their results"
        if t == RunFailed.topic and d.get("stage") not in ("", *self.stages):
            return "stage-names", f"stage {d.get('stage')!r} is not one of {self.stages}"
        return None

    def _stage_broken(self, t: str, d: dict[str, Any]) -> tuple[str, str] | None:
        stage, index, attempt = d.get("stage"), d.get("index"), d.get("attempt", 1)
        if not isinstance(index, int) or not 0 <= index < len(self.stages):
            return "stage-names", f"index {index!r} is not one of the run's {len(self.stages)}"
        if self.stages[index] != stage:
            return "stage-names", (
                f"stage {stage!r} is not the run's stage {index} ({self.stages[index]!r})"
            )
        last = self.attempts.get(index, 0)
        if t == StageStarted.topic:
            if index in self.completed:
                return "attempts", f"stage {stage!r} has completed; it takes no new attempt"
            if index in self.running:
                return "attempts", (
                    f"stage {stage!r} attempt {last} is still running: record its result first"
                )
            if attempt != last + 1:
                return "attempts", f"stage {stage!r}'s next attempt is {last + 1}, not {attempt}"
            return None
        if index not in self.running or attempt != last:
            return "attempts", (
                f"stage {stage!r} has no attempt {attempt} running (started, without a result)"
            )
        return None

    def _apply(self, t: str, d: dict[str, Any]) -> None:
        if t == RunSubmitted.topic:
            self.submitted = True
            self.driven = d.get("pipeline_version", 1) != REPORTED_VERSION
            self.stages = [s for s in d.get("stages", []) if isinstance(s, str)]
        elif t in _STAGE_TYPES and isinstance(d.get("index"), int):
            index = d["index"]
            if t == StageStarted.topic:
                self.attempts[index] = max(self.attempts.get(index, 0), d.get("attempt", 1))
                self.running.add(index)
            else:
                self.running.discard(index)
                if t == StageCompleted.topic:
                    self.completed.add(index)
        elif t in RUN_TERMINAL:
            self.ended = t
        elif t == RunRetried.topic:
            self.ended = None


def _data(data: Any) -> dict[str, Any]:
    """An event's data as the rules read it: a known type's payload as its fields."""
    if isinstance(data, DomainEvent):
        return msgspec.structs.asdict(data)
    return data if isinstance(data, dict) else {}
