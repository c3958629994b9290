"""The ``run_status`` projection's pure fold: runs, their stages, run counts and dead letters.

A run's status follows its lifecycle, the same way ``stageline.actors.decide``
folds it: ``processing`` from submission, ``retrying`` while a failed attempt
waits for its retry (the next ``StageStarted`` makes it ``processing`` again),
then one of the endings ``completed``, ``failed``, ``cancelled`` or
``compensated`` (undo). ``RunRetried`` takes a failed run back to
``processing``. A stage is ``pending`` until it starts, ``active`` while an
attempt runs, ``retrying`` between a failed attempt and the next, and ends
``completed``, ``failed``, ``skipped`` (its fallback applied),
``compensated`` (its effects reversed) or ``cancelled`` (its attempt was
running when the run was cancelled or undone: see ``shown_stages``).

Only streams named ``run-<run id>`` matter for the run handlers; the run id is
taken from the stream name. Dead letters (``dead_letters.py``) are folded in
the same projection and written by the same query: a run's dead letter counts
its stage's stored attempts, which only the run-status view holds, so both
move with one checkpoint and are rebuilt together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import msgspec

from stageline.actors.events import (
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
from stageline.events import RecordedEvent
from stageline.projections import dead_letters
from stageline.projections.batch import RUN_STREAM_PREFIX, Handler, Handlers, fold_into
from stageline.projections.changes import RunChange, RunStatusChanges

__all__ = [
    "HANDLERS",
    "RUN_CREATED",
    "RUN_ENDINGS",
    "RUN_FIELDS",
    "RUN_STREAM_PREFIX",
    "STAGE_CREATED",
    "STAGE_FIELDS",
    "RunStatus",
    "StageStatus",
    "fold",
    "shown_stages",
]

# Every key a change may carry: view adapters write exactly these properties.
RUN_CREATED = ("pipeline", "pipeline_version", "status", "submitted_at", "seq")
RUN_FIELDS = (
    "status", "current_stage", "updated_at", "completed_at", "ended_at",
    "error", "dead_letter", "reason",
)  # fmt: skip
STAGE_CREATED = ("status",)
STAGE_FIELDS = (
    "index", "status", "started_at", "ended_at", "duration_ms", "metadata", "error", "retry_at",
)  # fmt: skip


class RunStatus(StrEnum):
    """Every status a run can have; the counts view keeps one counter per member."""

    PROCESSING = "processing"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"
    CANCELLED = "cancelled"


RUN_ENDINGS = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.COMPENSATED}
)
"""Statuses only an ending event leaves (``RunRetried``, or another ending)."""


class StageStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    COMPENSATED = "compensated"
    CANCELLED = "cancelled"
    """Shown, never stored: see ``shown_stages``."""


RunHandler = Handler[RunStatusChanges]
"""``(changes, run id, event time in ms, event, upcast payload)``."""


def _ms(value: Any) -> int | None:
    """A time in epoch milliseconds: a datetime, or the RFC 3339 text JSON carries; naive is UTC."""
    if value is None:
        return None
    at = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)


def _resume(run: RunChange, status: RunStatus) -> None:
    """Move a run between processing and retrying, unless it has ended (a stray attempt)."""
    fields = run.fields
    if "status" in fields and not run.soft:  # an ending or a retry earlier in this batch
        if fields["status"] not in RUN_ENDINGS:
            fields["status"] = status
    else:  # where the run stands is not in this batch: the writer checks the stored status
        fields["status"], run.soft = status, True


def _settle(run: RunChange, status: RunStatus, **fields: Any) -> None:
    """Move a run to ``status`` whatever it was (an ending, or reopened by a retry)."""
    run.fields.update(status=status, **fields)
    run.soft = False


def _duration(d: dict[str, Any]) -> float | int | None:
    """A result's ``duration_ms`` (0.0 if left out) if it is a finite number, else None
    (stored as null: not timed in the stats, whose writer adds up only numbers)."""
    value = d.get("duration_ms", 0.0)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def _error(d: dict[str, Any]) -> str:
    return f"{d['error_type']}: {d['error']}"


# Handlers read everything they need from the payload before changing anything, so
# a malformed event is rejected whole instead of being folded in halfway.


def _run_submitted(
    b: RunStatusChanges, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    if not isinstance(d["pipeline"], str):  # the counts of each pipeline are keyed by it
        raise TypeError(f"pipeline must be a string, not {d['pipeline']!r}")
    created = {
        "pipeline": d["pipeline"],
        "pipeline_version": d["pipeline_version"],
        "status": RunStatus.PROCESSING,
        "submitted_at": at,
        "seq": e.position,
    }
    stages = list(enumerate(d["stages"]))
    run = b.run(run_id, at)
    if run.created is not None:
        return  # a second RunSubmitted for the same run: the first one stands
    run.created = created
    run.new = e.version == 0
    for index, name in stages:
        b.stage(run_id, name, index).created = {"status": StageStatus.PENDING}


def _stage_started(
    b: RunStatusChanges, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    name, index = d["stage"], d.get("index")
    run = b.run(run_id, at)
    run.fields["current_stage"] = name
    _resume(run, RunStatus.PROCESSING)
    stage = b.stage(run_id, name, index)
    stage.attempts += 1
    # a new attempt: what the previous one left behind no longer describes the stage
    stage.set_status(
        StageStatus.ACTIVE,
        reopens=d.get("attempt") != 1,
        started_at=at,
        ended_at=None,
        duration_ms=None,
        metadata=None,
        error=None,
        retry_at=None,
    )


def _stage_completed(
    b: RunStatusChanges, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    name, index, metadata = d["stage"], d.get("index"), d.get("metadata")
    fields = {
        "ended_at": at,
        "duration_ms": _duration(d),
        "metadata": msgspec.json.encode(metadata, order="sorted").decode() if metadata else None,
        "error": None,
        "retry_at": None,
    }
    b.run(run_id, at)
    b.stage(run_id, name, index).set_status(StageStatus.COMPLETED, reopens=False, **fields)


def _stage_failed(
    b: RunStatusChanges, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    name, index, will_retry = d["stage"], d.get("index"), bool(d.get("will_retry"))
    status = StageStatus.RETRYING if will_retry else StageStatus.FAILED
    fields = {
        "ended_at": at,
        "duration_ms": _duration(d),
        "error": _error(d),
        "retry_at": _ms(d.get("retry_at")) if will_retry else None,
    }
    run = b.run(run_id, at)
    if will_retry:
        _resume(run, RunStatus.RETRYING)
    # without a retry the run ends (RunFailed) or goes on (StageSkipped): those events say so
    b.stage(run_id, name, index).set_status(status, reopens=False, **fields)


def _stage_skipped(
    b: RunStatusChanges, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    name, index, next_stage = d["stage"], d.get("index"), d["next_stage"]
    b.run(run_id, at).fields["current_stage"] = next_stage
    b.stage(run_id, name, index).set_status(StageStatus.SKIPPED, reopens=True, retry_at=None)


def _stage_compensated(
    b: RunStatusChanges, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    name, index = d["stage"], d.get("index")
    b.run(run_id, at)
    b.stage(run_id, name, index).set_status(StageStatus.COMPENSATED, reopens=True, retry_at=None)


def _run_completed(
    b: RunStatusChanges, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    _settle(b.run(run_id, at), RunStatus.COMPLETED, completed_at=at, ended_at=at)


def _run_failed(
    b: RunStatusChanges, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    stage, error, dead_letter = d["stage"], _error(d), d.get("dead_letter")
    run = b.run(run_id, at)
    _settle(run, RunStatus.FAILED, error=error, dead_letter=dead_letter, ended_at=at)
    if dead_letter is not None:
        dead_letters.open_for_run(b, run_id, e.stream, stage, error, dead_letter, at, e.position)


def _run_cancelled(
    b: RunStatusChanges, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    reason = d.get("reason") or None
    _settle(b.run(run_id, at), RunStatus.CANCELLED, ended_at=at, reason=reason)


def _run_compensated(
    b: RunStatusChanges, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    reason = d.get("reason") or None
    _settle(b.run(run_id, at), RunStatus.COMPENSATED, ended_at=at, reason=reason)


def _run_retried(
    b: RunStatusChanges, run_id: str, at: int, e: RecordedEvent, d: dict[str, Any]
) -> None:
    name, index = d["stage"], d.get("index")
    _settle(
        b.run(run_id, at),
        RunStatus.PROCESSING,
        current_stage=name,
        ended_at=None,
        error=None,
        dead_letter=None,
        reason=None,
    )
    # the stage waits for its fresh attempt; its last error stays until that starts
    b.stage(run_id, name, index).set_status(StageStatus.PENDING, reopens=True, retry_at=None)


HANDLERS: dict[str, RunHandler] = {
    RunSubmitted.topic: _run_submitted,
    StageStarted.topic: _stage_started,
    StageCompleted.topic: _stage_completed,
    StageFailed.topic: _stage_failed,
    StageSkipped.topic: _stage_skipped,
    StageCompensated.topic: _stage_compensated,
    RunCompleted.topic: _run_completed,
    RunFailed.topic: _run_failed,
    RunCancelled.topic: _run_cancelled,
    RunCompensated.topic: _run_compensated,
    RunRetried.topic: _run_retried,
}
"""Run lifecycle event type -> how it changes the view; a new lifecycle event adds one entry."""

FOLD: Handlers[RunStatusChanges] = {
    **{topic: (h, True) for topic, h in HANDLERS.items()},
    **{topic: (h, False) for topic, h in dead_letters.HANDLERS.items()},
}
"""Every event type the projection folds: run lifecycle (run streams only) and dead letters."""


_STOPPED = frozenset({RunStatus.CANCELLED, RunStatus.COMPENSATED})
"""Endings that stop a run wherever it stands: a stage running then never ends by itself."""


def shown_stages(run_status: str | None, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's stored stages as the view shows them, in place.

    A cancelled run's stage that waited for a retry waits for nothing: it shows
    ``pending`` with no ``retry_at``, as a stage the cancel found not started does
    (its last error stays, as after ``RunRetried``). A stage whose attempt was
    running when its run was cancelled or undone records nothing more (it is
    interrupted, or its result discarded at the stage boundary): it shows
    ``cancelled``, not ``active``.
    Done as the row is read, not folded: ``RunCancelled`` and ``RunCompensated``
    name no stage, and which one runs or waits may be known only to the stored
    row, which a batch's changes cannot address by a computed name. Live and
    rebuilt views hold the same rows, so they show the same.
    """
    if run_status not in _STOPPED:
        return stages
    for stage in stages:
        status = stage.get("status")
        if status == StageStatus.ACTIVE:
            stage["status"] = StageStatus.CANCELLED.value
        elif status == StageStatus.RETRYING and run_status == RunStatus.CANCELLED:
            stage.update(status=StageStatus.PENDING.value, retry_at=None)
    return stages


def fold(events: Iterable[RecordedEvent]) -> RunStatusChanges:
    """Fold a batch of log events (oldest first) into the ``run_status`` changes."""
    return fold_into(RunStatusChanges(), events, FOLD)
