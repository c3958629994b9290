"""Builders for pure ontology tests: recorded events on run and ontology streams."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import msgspec

from stageline.events.envelope import DomainEvent, RecordedEvent, new_event
from stageline.events.keys import ONTOLOGY_STREAM
from stageline.ontology.events import PatternMatched, PatternProposed
from stageline.ontology.model import Ontology, pattern_id
from stageline.ontology.seed import seed_events

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class Log:
    """Numbers positions and per-stream versions like the store does."""

    def __init__(self) -> None:
        self.positions = itertools.count(1)
        self.versions: dict[str, int] = {}

    def record(self, stream: str, payload: DomainEvent) -> RecordedEvent:
        event = new_event(payload)
        version = self.versions.get(stream, -1) + 1
        self.versions[stream] = version
        return RecordedEvent(
            event_id=event.event_id,
            type=event.type,
            schema_version=event.schema_version,
            stream=stream,
            version=version,
            position=next(self.positions),
            workspace="w",
            occurred_at=T0,
            recorded_at=T0,
            correlation_id=None,
            causation_id=None,
            data=msgspec.to_builtins(payload),
        )

    def run(self, run_id: str, payload: DomainEvent) -> RecordedEvent:
        return self.record(f"run-{run_id}", payload)

    def ontology(self, payload: DomainEvent) -> RecordedEvent:
        return self.record(ONTOLOGY_STREAM, payload)


def seeded(log: Log) -> Ontology:
    """An ontology holding the seed, as if the seed were the stream's first events."""
    return Ontology.of([log.ontology(e) for e in seed_events()])


def proposed(name: str, entity_type: str, confidence: float = 0.5) -> PatternProposed:
    return PatternProposed(
        pattern_id=pattern_id(name, entity_type),
        name=name,
        entity_type=entity_type,
        confidence=confidence,
        rule="test",
        start=0,
        end=len(name),
    )


def matched(
    name: str, entity_type: str, mentions: int = 1, source: str = "discovered"
) -> PatternMatched:
    return PatternMatched(
        pattern_id=pattern_id(name, entity_type),
        name=name,
        entity_type=entity_type,
        source=source,  # type: ignore[arg-type]
        is_global=False,
        mentions=mentions,
        established=source != "discovered",
    )
