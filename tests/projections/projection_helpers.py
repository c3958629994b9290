"""Run lifecycles as event sequences, shared by the projection tests."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from stageline.actors.builtin.memory import EntityMentioned, EntityMentionRetracted
from stageline.actors.events import (
    DeadLetterDiscarded,
    DeadLettered,
    DeadLetterRedriven,
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
from stageline.events import DomainEvent, NewEvent, RecordedEvent, new_event
from stageline.projections import ENTITIES, PIPELINES, RUN_STATUS, FalkorDBViews, Projection, Write

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
VIEWS: tuple[Projection[Any], ...] = (RUN_STATUS, ENTITIES, PIPELINES)
"""The projections these helpers write and read back (others may be registered too)."""
STAGES = ["fetch", "parse", "embed"]
MENTIONS = [("person", "Ada Lovelace"), ("language", "Python")]
"""What a ``mentioned`` or ``undone`` run's parse stage mentions, once each."""

KINDS = {
    "completed": "completed",
    "failed": "failed",
    "retried": "completed",  # fetch fails once, then every stage completes
    "running": "processing",  # stopped while parse runs
    "retrying": "retrying",  # fetch failed and waits for its retry
    "cancelled": "cancelled",  # cancelled while fetch waits for its retry
    "skipped": "completed",  # parse gives up, its fallback skips to embed
    "fallback": "completed",  # fetch gives up after two attempts, falls back to embed
    "dead": "failed",  # parse gives up after two attempts: a dead letter
    "redriven": "completed",  # dead, then retried (the dead letter redriven) and completed
    "mentioned": "completed",  # parse mentions MENTIONS
    "undone": "compensated",  # mentioned, completed, then undone
}
"""Lifecycle kind -> the status the run ends in."""


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
    dead_letter: str | None = None

    @property
    def stream(self) -> str:
        return f"run-{self.run_id}"


def lifecycle(
    run_id: str, kind: str, clock: Clock, *, pipeline: str = "ingest", durations: Any = None
) -> Lifecycle:
    """One run of ``kind`` (see ``KINDS``), its events ``clock`` ticks apart."""
    durations = durations or [10.0 * (i + 1) for i in range(len(STAGES))]
    life = Lifecycle(run_id, status=KINDS[kind])

    def add(payload: DomainEvent) -> NewEvent:
        event = new_event(payload, occurred_at=clock())
        life.events.append(event)
        return event

    def start(i: int, attempt: int = 1) -> None:
        add(StageStarted(stage=STAGES[i], index=i, attempt=attempt))

    def complete(i: int) -> None:
        metadata = {"chars": i}
        add(StageCompleted(stage=STAGES[i], index=i, duration_ms=durations[i], metadata=metadata))

    def fail(i: int, *, retry: bool, attempt: int = 1) -> None:
        if retry:
            retry_at = clock.at + timedelta(seconds=1)
            error = {"error_type": "Timeout", "error": "slow", "retry_at": retry_at}
        else:
            error = {"error_type": "ValueError", "error": 'bad "doc"\nline 2'}
        add(StageFailed(stage=STAGES[i], index=i, attempt=attempt, will_retry=retry, **error))

    def skip(i: int, to: int) -> None:
        reason = "retries exhausted; fallback"
        add(
            StageSkipped(
                stage=STAGES[i], index=i, reason=reason, next_stage=STAGES[to], next_index=to
            )
        )

    def dead(i: int) -> None:
        life.dead_letter = str(uuid.uuid4())
        add(
            RunFailed(
                stage=STAGES[i],
                error_type="ValueError",
                error='bad "doc"\nline 2',
                dead_letter=life.dead_letter,
            )
        )

    add(RunSubmitted(pipeline=pipeline, pipeline_version=2, stages=STAGES, input={"n": 1}))
    start(0)
    if kind in ("retrying", "cancelled"):
        fail(0, retry=True)
        if kind == "cancelled":
            add(RunCancelled(reason="user asked"))
        return life
    if kind == "retried":
        fail(0, retry=True)
        start(0, attempt=2)
    if kind == "fallback":
        fail(0, retry=True)
        start(0, attempt=2)
        fail(0, retry=False, attempt=2)
        skip(0, to=2)
    else:
        complete(0)
        start(1)
        if kind == "running":
            return life
        if kind == "failed":
            fail(1, retry=False)
            add(RunFailed(stage="parse", error_type="ValueError", error='bad "doc"\nline 2'))
            return life
        if kind == "skipped":
            fail(1, retry=False)
            skip(1, to=2)
        elif kind in ("dead", "redriven"):
            fail(1, retry=True)
            start(1, attempt=2)
            fail(1, retry=False, attempt=2)
            dead(1)
            if kind == "dead":
                return life
            add(RunRetried(stage="parse", index=1, attempt=3))
            add(DeadLetterRedriven(dead_letter=life.dead_letter or ""))
            start(1, attempt=3)
            complete(1)
        else:
            mentions = []
            if kind in ("mentioned", "undone"):
                mentions = [
                    add(EntityMentioned(entity=n, entity_type=t, surface=n, start=0, end=len(n)))
                    for t, n in MENTIONS
                ]
            complete(1)
    start(2)
    complete(2)
    add(RunCompleted(output={"ok": True}))
    if kind == "undone":
        ids = [str(m.event_id) for m in mentions]
        add(StageCompensated(stage="parse", index=1, compensates=ids, reason="undo"))
        for (t, n), id_ in zip(MENTIONS, ids, strict=True):
            add(EntityMentionRetracted(compensates=id_, entity=n, entity_type=t))
        add(RunCompensated(stages=STAGES))
    return life


def poison(
    dead_letter: str, clock: Clock, *, closed: str | None = None, run_id: str | None = None
) -> list[tuple[str, NewEvent]]:
    """A poison command's ``dead-letters`` entries: recorded, then ``closed`` if asked.

    ``closed`` is "redriven" or "discarded".
    """
    entry = DeadLettered(
        dead_letter=dead_letter,
        actor="parser",
        error="DecodeError: not a command",
        deliveries=5,
        run_id=run_id,
        stage="1" if run_id else None,
    )
    pairs = [("dead-letters", new_event(entry, occurred_at=clock()))]
    if closed == "redriven":
        pairs.append(
            (
                "dead-letters",
                new_event(DeadLetterRedriven(dead_letter=dead_letter), occurred_at=clock()),
            )
        )
    elif closed == "discarded":
        closing = DeadLetterDiscarded(dead_letter=dead_letter, reason="junk")
        pairs.append(("dead-letters", new_event(closing, occurred_at=clock())))
    return pairs


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


def as_recorded(
    pairs: list[tuple[str, NewEvent]],
    first_position: int = 1,
    after: Sequence[RecordedEvent] = (),
) -> list[RecordedEvent]:
    """Number (stream, event) pairs as consecutive log positions and stream versions, as a
    store would, without one; the versions of the streams of ``after`` go on from it."""
    versions: Counter[str] = Counter()
    for e in after:
        versions[e.stream] = max(versions[e.stream], e.version + 1)
    numbered = []
    for stream, _ in pairs:
        numbered.append(versions[stream])
        versions[stream] += 1
    return [
        RecordedEvent(
            event_id=event.event_id,
            type=event.type,
            schema_version=event.schema_version,
            stream=stream,
            version=numbered[i],
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


def of_run(life: Lifecycle, first_position: int = 1) -> list[RecordedEvent]:
    """One run's events as log entries."""
    return as_recorded([(life.stream, e) for e in life.events], first_position)


def raw(event_type: str, data: dict[str, Any], at: datetime = T0) -> NewEvent:
    """An event of any type and payload, checked by nothing (as foreign systems append them)."""
    return NewEvent(type=event_type, data=data, occurred_at=at)


async def write_views(
    views: FalkorDBViews,
    workspace: str,
    events: list[RecordedEvent],
    expected: int = 0,
    projections: tuple[Projection[Any], ...] = VIEWS,
) -> int:
    """Fold ``events`` for each of ``projections`` and write them, all from ``expected``.

    Asserts every write applied; returns the position written up to.
    """
    writes = [Write(p, p.fold(events), expected) for p in projections]
    assert await views.apply_all(workspace, writes) == [True] * len(writes)
    return events[-1].position


async def view_of(views: FalkorDBViews, workspace: str, projection: str) -> dict[str, Any]:
    """Everything one projection's view holds, through its readers."""
    if projection == ENTITIES.name:
        return {
            "entities": await views.entities(workspace, limit=10_000),
            "mentions": [await views.entity(workspace, t, n) for t, n in MENTIONS],
        }
    if projection == PIPELINES.name:
        return {"pipelines": await views.pipelines(workspace)}
    assert projection == RUN_STATUS.name
    runs, cursor = [], None
    while True:
        page, cursor = await views.list_runs(workspace, limit=7, cursor=cursor)
        runs += page
        if cursor is None:
            break
    return {
        "runs": {run["id"]: await views.get_run(workspace, run["id"]) for run in runs},
        "stats": await views.stats(workspace),
        "dead_letters": (await views.list_dead_letters(workspace, status=None, limit=10_000))[0],
    }


async def snapshot(views: FalkorDBViews, workspace: str) -> dict[str, Any]:
    """Everything the views of ``VIEWS`` hold, through their readers."""
    out: dict[str, Any] = {}
    for projection in VIEWS:
        out |= await view_of(views, workspace, projection.name)
    return out


async def counts_match_rows(views: FalkorDBViews, workspace: str) -> dict[str, int]:
    """The stored run counts, checked against the statuses of the stored runs."""
    runs, cursor = [], None
    while True:
        page, cursor = await views.list_runs(workspace, limit=500, cursor=cursor)
        runs += page
        if cursor is None:
            break
    counts = (await views.stats(workspace))["counts"]
    by_rows = Counter(run["status"] for run in runs)
    assert counts == {status: by_rows.get(status, 0) for status in counts}
    return {status: n for status, n in counts.items() if n}


def logged(pairs: Sequence[tuple[str, DomainEvent]], first: int = 1) -> list[RecordedEvent]:
    """(stream, payload) pairs as consecutive log entries, a second apart."""
    versions: Counter[str] = Counter()
    out = []
    for position, (stream, payload) in enumerate(pairs, first):
        event = new_event(payload, occurred_at=T0 + timedelta(seconds=position))
        out.append(
            RecordedEvent(
                event_id=event.event_id,
                type=event.type,
                schema_version=event.schema_version,
                stream=stream,
                version=versions[stream],
                position=position,
                workspace="w",
                occurred_at=event.occurred_at,
                recorded_at=event.occurred_at,
                correlation_id=None,
                causation_id=None,
                data=msgspec.to_builtins(payload),
            )
        )
        versions[stream] += 1
    return out
