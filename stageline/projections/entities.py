"""The ``entities`` projection's pure fold: how often each entity is mentioned, net.

Each ``EntityMentioned`` adds one to its entity, each ``EntityMentionRetracted``
(an undo or a compensation) takes one away, so undoing a run brings every
count back to what it was before the run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stageline.actors.builtin.memory import EntityMentioned, EntityMentionRetracted
from stageline.events import RecordedEvent
from stageline.projections.batch import Handler, fold_into
from stageline.projections.changes import EntityChanges

__all__ = ["HANDLERS", "fold"]

EntityHandler = Handler[EntityChanges]


def _moved(by: int) -> EntityHandler:
    def handle(b: EntityChanges, stream: str, at: int, e: RecordedEvent, d: dict[str, Any]) -> None:
        entity_type, name = d["entity_type"], d["entity"]
        if not isinstance(entity_type, str) or not isinstance(name, str):
            raise TypeError("entity and entity_type must be strings")
        b.entity(entity_type, name).mentions += by

    return handle


HANDLERS: dict[str, EntityHandler] = {
    EntityMentioned.topic: _moved(1),
    EntityMentionRetracted.topic: _moved(-1),
}
"""Mention event type (on any stream) -> how it moves the counts."""

_FOLD = {topic: (h, False) for topic, h in HANDLERS.items()}


def fold(events: Iterable[RecordedEvent]) -> EntityChanges:
    """Fold a batch of log events (oldest first) into the ``entities`` changes."""
    return fold_into(EntityChanges(), events, _FOLD)
