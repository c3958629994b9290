"""The run-status projection as a pure fold: run lifecycle events in, row changes out.

A batch of events of any length becomes one ``RunChange`` per run and one
``StageChange`` per (run, stage), plus per-status count deltas and the batch's
last position, so a view adapter writes each touched row once per batch.

Changes compose: applying the changes of two consecutive batches one after
the other leaves a view equal to applying the fold of both batches at once
(``created`` applies only to a new row, ``fields`` are last-writer-wins,
``attempts`` adds up). That is what makes a rebuild equal the live view.

Only streams named ``run-<run id>`` matter; events of unknown types are
skipped, since other systems append their own events to the same log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

from stageline.actors.events import (
    RunCompleted,
    RunFailed,
    RunSubmitted,
    StageCompleted,
    StageFailed,
    StageStarted,
)
from stageline.errors import InvalidEvent
from stageline.events import RecordedEvent, registry
from stageline.events.keys import run_stream

__all__ = [
    "RUN_CREATED",
    "RUN_FIELDS",
    "RUN_STREAM_PREFIX",
    "STAGE_CREATED",
    "STAGE_FIELDS",
    "RunChange",
    "RunStatus",
    "RunStatusChanges",
    "StageChange",
    "StageStatus",
    "fold",
]

RUN_STREAM_PREFIX = run_stream("")

# Every key a change may carry: view adapters write exactly these properties.
RUN_CREATED = ("pipeline", "pipeline_version", "status", "submitted_at", "seq")
RUN_FIELDS = ("status", "current_stage", "updated_at", "completed_at", "error")
STAGE_CREATED = ("status",)
STAGE_FIELDS = ("index", "status", "started_at", "ended_at", "duration_ms", "metadata", "error")


class RunStatus(StrEnum):
    """Every status a run can have; the counts view keeps one counter per member."""

    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class StageStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(slots=True)
class RunChange:
    """What one batch does to one run.

    ``created`` is applied only when the run's row does not exist yet (it is
    set by the batch holding ``RunSubmitted``); then ``fields`` overwrite
    whatever the row holds, a ``None`` value removing the property.
    """

    run_id: str
    created: dict[str, Any] | None = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StageChange:
    """What one batch does to one stage of a run, like ``RunChange``.

    ``attempts`` is added to the stored count of attempts, which starts at 0.
    """

    run_id: str
    name: str
    created: dict[str, Any] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0

    @property
    def key(self) -> str:
        return f"{self.run_id}/{self.name}"


@dataclass(slots=True)
class RunStatusChanges:
    """The fold of one batch: row changes, count deltas and the position to checkpoint."""

    runs: dict[str, RunChange] = field(default_factory=dict)
    stages: dict[tuple[str, str], StageChange] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    """Per run status, how much its count moves; statuses that do not move are absent.

    Derived from the events alone, each transition counted once per batch. A
    lifecycle event repeated in a later batch would count again, but run
    streams are appended with expected versions, so they hold no repeats.
    """
    position: int = 0
    """The last log position folded, relevant event or not: the checkpoint to store."""
    events: int = 0
    """How many log events the batch held, relevant or not."""
    rejected: list[int] = field(default_factory=list)
    """Positions of events of a known type whose payload could not be folded (skipped)."""

    @property
    def has_rows(self) -> bool:
        return bool(self.runs or self.stages or self.counts)


class _Fold:
    def __init__(self) -> None:
        self.out = RunStatusChanges()
        # the status each run has reached within this batch, to count transitions once
        self.status: dict[str, str] = {}

    def run(self, run_id: str, at: int) -> RunChange:
        change = self.out.runs.get(run_id)
        if change is None:
            change = self.out.runs[run_id] = RunChange(run_id)
        change.fields["updated_at"] = at
        return change

    def stage(self, run_id: str, name: str, index: Any) -> StageChange:
        change = self.out.stages.get((run_id, name))
        if change is None:
            change = self.out.stages[(run_id, name)] = StageChange(run_id, name)
        if index is not None:
            change.fields["index"] = index
        return change

    def move(self, run_id: str, to: RunStatus) -> None:
        # a run not submitted in this batch can only be processing until it ends
        before = self.status.get(run_id, RunStatus.PROCESSING)
        if before != to:
            counts = self.out.counts
            counts[before] = counts.get(before, 0) - 1
            counts[to] = counts.get(to, 0) + 1
            self.status[run_id] = to


Handler = Callable[[_Fold, str, int, RecordedEvent, dict[str, Any]], None]


# Handlers read everything they need from the payload before changing anything, so
# a malformed event is rejected whole instead of being folded in halfway.


def _run_submitted(f: _Fold, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
    created = {
        "pipeline": d["pipeline"],
        "pipeline_version": d["pipeline_version"],
        "status": RunStatus.PROCESSING,
        "submitted_at": at,
        "seq": e.position,
    }
    stages = list(enumerate(d["stages"]))
    run = f.run(run_id, at)
    if run.created is not None:
        return  # a second RunSubmitted for the same run: never count a run twice
    run.created = created
    counts = f.out.counts
    counts[RunStatus.PROCESSING] = counts.get(RunStatus.PROCESSING, 0) + 1
    f.status[run_id] = RunStatus.PROCESSING
    for index, name in stages:
        f.stage(run_id, name, index).created = {"status": StageStatus.PENDING}


def _stage_started(f: _Fold, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
    name, index = d["stage"], d.get("index")
    f.run(run_id, at).fields["current_stage"] = name
    stage = f.stage(run_id, name, index)
    stage.attempts += 1
    # a new attempt: what the previous one left behind no longer describes the stage
    stage.fields.update(
        status=StageStatus.ACTIVE,
        started_at=at,
        ended_at=None,
        duration_ms=None,
        metadata=None,
        error=None,
    )


def _stage_completed(f: _Fold, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
    name, index, metadata = d["stage"], d.get("index"), d.get("metadata")
    fields = {
        "status": StageStatus.COMPLETED,
        "ended_at": at,
        "duration_ms": d.get("duration_ms", 0.0),
        "metadata": msgspec.json.encode(metadata, order="sorted").decode() if metadata else None,
        "error": None,
    }
    f.run(run_id, at)
    f.stage(run_id, name, index).fields.update(fields)


def _stage_failed(f: _Fold, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
    name, index = d["stage"], d.get("index")
    fields = {
        "status": StageStatus.FAILED,
        "ended_at": at,
        "duration_ms": d.get("duration_ms", 0.0),
        "error": f"{d['error_type']}: {d['error']}",
    }
    f.run(run_id, at)
    f.stage(run_id, name, index).fields.update(fields)


def _run_completed(f: _Fold, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
    f.run(run_id, at).fields.update(status=RunStatus.COMPLETED, completed_at=at)
    f.move(run_id, RunStatus.COMPLETED)


def _run_failed(f: _Fold, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
    error = f"{d['error_type']}: {d['error']}"
    f.run(run_id, at).fields.update(status=RunStatus.FAILED, error=error)
    f.move(run_id, RunStatus.FAILED)


HANDLERS: dict[str, Handler] = {
    RunSubmitted.topic: _run_submitted,
    StageStarted.topic: _stage_started,
    StageCompleted.topic: _stage_completed,
    StageFailed.topic: _stage_failed,
    RunCompleted.topic: _run_completed,
    RunFailed.topic: _run_failed,
}
"""Event type -> how it changes the view; a new lifecycle event adds one entry here."""


def fold(events: Iterable[RecordedEvent]) -> RunStatusChanges:
    """Fold a batch of log events (oldest first) into the run-status view's changes."""
    f = _Fold()
    handlers, upcast, prefix, cut = (
        HANDLERS.get,
        registry.upcast,
        RUN_STREAM_PREFIX,
        len(RUN_STREAM_PREFIX),
    )
    count, last = 0, None
    for e in events:
        count += 1
        last = e
        handler = handlers(e.type)
        if handler is None or not e.stream.startswith(prefix):
            continue
        try:
            # upcast the raw dict: converting whole payloads we barely read would cost more
            data = upcast(e.type, e.schema_version, e.data)
            handler(f, e.stream[cut:], int(e.occurred_at.timestamp() * 1000), e, data)
        except (KeyError, TypeError, ValueError, InvalidEvent):
            # one bad payload must not stall the view forever: skip it, and say so
            f.out.rejected.append(e.position)
    out = f.out
    out.events, out.position = count, last.position if last is not None else 0
    out.counts = {status: n for status, n in out.counts.items() if n}
    return out
