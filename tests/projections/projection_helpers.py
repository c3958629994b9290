"""Run lifecycles as event sequences, shared by the projection tests."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
from stageline.events import DomainEvent, NewEvent, RecordedEvent, new_event

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STAGES = ["fetch", "parse", "embed"]


@dataclass
class Clock:
    """Hands out strictly increasing event times, 5 ms apart."""

    at: datetime = T0

    def __call__(self) -> datetime:
        self.at += timedelta(milliseconds=5)
        return self.at


@dataclass
class Lifecycle:
    """One run's events, oldest first, and the status it should end in."""

    run_id: str
    events: list[NewEvent] = field(default_factory=list)
    status: str = "processing"

    @property
    def stream(self) -> str:
        return f"run-{self.run_id}"


def lifecycle(
    run_id: str, kind: str, clock: Clock, *, pipeline: str = "ingest", durations: Any = None
) -> Lifecycle:
    """``kind``: completed, failed, retried (stage 0 fails once, then all complete), running."""
    durations = durations or [10.0 * (i + 1) for i in range(len(STAGES))]
    life = Lifecycle(run_id)

    def add(payload: DomainEvent) -> None:
        life.events.append(new_event(payload, occurred_at=clock()))

    add(RunSubmitted(pipeline=pipeline, pipeline_version=2, stages=STAGES, input={"n": 1}))
    for index, stage in enumerate(STAGES):
        add(StageStarted(stage=stage, index=index))
        if kind == "running" and index == 1:
            return life
        if kind == "retried" and index == 0:
            add(
                StageFailed(
                    stage=stage, index=0, error_type="Timeout", error="slow", will_retry=True
                )
            )
            add(StageStarted(stage=stage, index=0, attempt=2))
        if kind == "failed" and index == 1:
            add(
                StageFailed(
                    stage=stage, index=1, error_type="ValueError", error='bad "doc"\nline 2'
                )
            )
            add(RunFailed(stage=stage, error_type="ValueError", error='bad "doc"\nline 2'))
            life.status = "failed"
            return life
        add(
            StageCompleted(
                stage=stage, index=index, duration_ms=durations[index], metadata={"chars": index}
            )
        )
    add(RunCompleted(output={"ok": True}))
    life.status = "completed"
    return life


def interleave(lives: list[Lifecycle], seed: int = 7) -> list[tuple[str, NewEvent]]:
    """All events of ``lives`` in one order a busy system could produce: each run in order."""
    rnd = random.Random(seed)
    queues = [(life.stream, list(life.events)) for life in lives]
    out: list[tuple[str, NewEvent]] = []
    while queues:
        i = rnd.randrange(len(queues))
        stream, queue = queues[i]
        out.append((stream, queue.pop(0)))
        if not queue:
            queues.pop(i)
    return out


def as_recorded(pairs: list[tuple[str, NewEvent]], first_position: int = 1) -> list[RecordedEvent]:
    """Number (stream, event) pairs as consecutive log positions, as a store would, without one."""
    return [
        RecordedEvent(
            event_id=event.event_id,
            type=event.type,
            schema_version=event.schema_version,
            stream=stream,
            version=0,
            position=first_position + i,
            workspace="w",
            occurred_at=event.occurred_at,
            recorded_at=event.occurred_at,
            correlation_id=None,
            causation_id=None,
            data=msgspec.to_builtins(event.data),
        )
        for i, (stream, event) in enumerate(pairs)
    ]


def raw(event_type: str, data: dict[str, Any], at: datetime = T0) -> NewEvent:
    """An event of any type and payload, checked by nothing (as foreign systems append them)."""
    return NewEvent(type=event_type, data=data, occurred_at=at)
