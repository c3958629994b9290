"""The runs an imported log leaves unfinished, as ``fold_run`` would have them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from stageline.actors.held import UnfinishedRuns
from stageline.events.envelope import RecordedEvent

T = datetime(2025, 6, 1, tzinfo=UTC)


def events(*plan: tuple[str, str, dict[str, Any]]) -> list[RecordedEvent]:
    """``(stream, type, data)`` each, in log order, each stream's versions from 0."""
    versions: dict[str, int] = {}
    out = []
    for position, (stream, type_, data) in enumerate(plan, start=1):
        version = versions[stream] = versions.get(stream, -1) + 1
        out.append(
            RecordedEvent(
                event_id=uuid.uuid4(),
                type=type_,
                schema_version=1,
                stream=stream,
                version=version,
                position=position,
                workspace="w",
                occurred_at=T,
                recorded_at=T,
                correlation_id=None,
                causation_id=None,
                data=data,
            )
        )
    return out


SUBMITTED = {"pipeline": "flaky", "pipeline_version": 1, "stages": [], "input": {}}


def test_unfinished_runs_are_named_with_their_length() -> None:
    runs = UnfinishedRuns()
    for e in events(
        ("run-a", "RunSubmitted", SUBMITTED),  # in flight at the end
        ("run-b", "RunSubmitted", SUBMITTED),  # completed
        ("run-a", "StageStarted", {"stage": "normalize", "index": 0}),
        ("run-b", "RunCompleted", {}),
        ("run-c", "RunSubmitted", SUBMITTED),  # failed, then retried: unfinished again
        ("run-c", "RunFailed", {}),
        ("run-c", "RunRetried", {"stage": "flaky", "index": 1, "attempt": 2}),
        ("run-c", "DeadLetterRedriven", {}),
        ("run-d", "RunSubmitted", SUBMITTED),  # failed into the dead letters
        ("run-d", "RunFailed", {}),
        ("run-e", "RunSubmitted", {**SUBMITTED, "pipeline_version": 0}),  # reported: not ours
        ("pipeline-x", "PipelineDefined", {}),  # not a run
        ("run-f", "StageStarted", {}),  # a stream named like a run that never was one
    ):
        runs.see(e)
    assert runs.lengths() == {"run-a": 2, "run-c": 4}
    assert UnfinishedRuns().lengths() == {}
