"""The benchmark's workload: a 5-stage no-op pipeline and synthetic runs shaped like its runs.

A run of the pipeline records 12 events: ``RunSubmitted``, five times
``StageStarted`` + ``StageCompleted``, ``RunCompleted``. The synthetic runs
written for the append and rebuild scenarios are those same events, with the
payloads, correlation and causation ids a live run carries.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from stageline.actors.events import RunCompleted, RunSubmitted, StageCompleted, StageStarted
from stageline.actors.pipeline import Pipeline, PipelineCatalog, StageSpec
from stageline.actors.stage import ActorRegistry, StageContext, StageResult
from stageline.events import keys
from stageline.events.envelope import NO_STREAM, NewEvent, new_event
from stageline.events.store import AppendRequest

STAGES = ("noop-1", "noop-2", "noop-3", "noop-4", "noop-5")
ACTORS = tuple(f"bench-{s}" for s in STAGES)
EVENTS_PER_RUN = 2 + 2 * len(STAGES)

PIPELINE = Pipeline(
    name="bench-noop5",
    version=1,
    description="Five stages that do nothing: the cost of the machinery alone.",
    stages=tuple(
        StageSpec(name=stage, actor=actor, timeout_seconds=30)
        for stage, actor in zip(STAGES, ACTORS, strict=True)
    ),
)

TEXT = "Met Alice in Berlin on Monday to plan the launch of Project Atlas with the Orion team."


def noop(item: dict[str, Any], ctx: StageContext) -> StageResult:
    return StageResult()


def install(actors: ActorRegistry, catalog: PipelineCatalog) -> None:
    """Register the no-op actors and the pipeline (a built-in of this process)."""
    for actor in ACTORS:
        if actor not in actors:
            actors.register(actor, noop)
    catalog.add(PIPELINE)


def item(i: int) -> dict[str, Any]:
    return {"text": TEXT, "id": f"item-{i}"}


def run_events(i: int, run_id: str | None = None) -> tuple[str, list[NewEvent]]:
    """A completed run's 12 events, as the live pipeline records them; its stream name."""
    run_id = run_id or str(uuid.uuid4())
    at = datetime.now(UTC)
    tick = timedelta(microseconds=300)
    events: list[NewEvent] = []

    def add(payload: Any) -> None:
        cause = str(events[-1].event_id) if events else None
        events.append(
            new_event(
                payload,
                occurred_at=at + tick * len(events),
                correlation_id=run_id,
                causation_id=cause,
            )
        )

    add(
        RunSubmitted(
            pipeline=PIPELINE.name,
            pipeline_version=PIPELINE.version,
            stages=list(STAGES),
            input=item(i),
        )
    )
    for index, stage in enumerate(STAGES):
        add(StageStarted(stage=stage, index=index, attempt=1))
        add(StageCompleted(stage=stage, index=index, attempt=1, duration_ms=0.004))
    add(RunCompleted())
    return keys.run_stream(run_id), events


def run_requests(workspace: str, runs: int, *, start: int = 0) -> list[AppendRequest]:
    """One request per run, appending its 12 events to a new stream."""
    out = []
    for i in range(start, start + runs):
        stream, events = run_events(i)
        out.append(AppendRequest(workspace, stream, events, NO_STREAM))
    return out


def event_requests(runs: list[AppendRequest]) -> list[AppendRequest]:
    """The same runs as one request per event, each expecting the version before it."""
    return [
        AppendRequest(r.workspace, r.stream, [event], version - 1)
        for r in runs
        for version, event in enumerate(r.events)
    ]


def _steps(events: list[NewEvent]) -> list[list[NewEvent]]:
    """A run's events as the live pipeline appends them: ``RunSubmitted``; each stage's
    ``StageStarted``; its ``StageCompleted`` (the last with ``RunCompleted``)."""
    return [[e] for e in events[:-2]] + [events[-2:]]


def interleaved_batches(
    workspace: str, runs: int, group: int = 100
) -> Iterator[list[AppendRequest]]:
    """The runs' appends in the order a live pipeline interleaves them, one batch per tick.

    Runs move in groups of ``group``, one step per tick, each group a tick behind the
    one before (as a 5-stage pipeline keeps several batches in flight), so that a
    log batch holds a few events of many runs, as in a live log, not whole runs.
    """
    groups = []
    for start in range(0, runs, group):
        members = []
        for i in range(start, min(start + group, runs)):
            stream, events = run_events(i)
            members.append((stream, _steps(events)))
        groups.append(members)
    steps = len(members[0][1]) if groups else 0
    for tick in range(len(groups) + steps - 1):
        batch = []
        for g in range(max(0, tick - steps + 1), min(tick + 1, len(groups))):
            step = tick - g
            for stream, parts in groups[g]:
                version = sum(len(p) for p in parts[:step]) - 1
                batch.append(AppendRequest(workspace, stream, parts[step], version))
        yield batch
