"""An append request's body turned into the events to append.

Shared by ``POST /v1/streams/{stream}/events`` and the ingest channel
(``stageline.actors.ingest``), so both check, type and id events alike. Pure: no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from stageline.api.schemas import AppendEvents, EventIn
from stageline.errors import InvalidEvent
from stageline.events.envelope import ANY, NO_STREAM, NewEvent, registry

__all__ = ["expected_version", "idempotent_event_id", "new_events", "to_new_event"]

_NAMESPACE = uuid.UUID("0b6f3f0e-5c7a-4d55-9f57-3a1f7f0c2d11")
_EXPECTED = {"any": ANY, "no_stream": NO_STREAM}


def idempotent_event_id(workspace: str, stream: str, key: str, index: int) -> uuid.UUID:
    """The id of the ``index``-th event of a request with Idempotency-Key ``key``.

    Deterministic, so the store drops every event of a retried request as a duplicate.
    """
    return uuid.uuid5(_NAMESPACE, f"{workspace}\0{stream}\0{key}\0{index}")


def expected_version(body: AppendEvents) -> int:
    """The body's ``expected_version`` as the store takes it."""
    expected = body.expected_version
    return _EXPECTED[expected] if isinstance(expected, str) else expected


def to_new_event(
    index: int,
    event: EventIn,
    *,
    event_id: uuid.UUID,
    correlation_id: str,
    now: datetime,
) -> NewEvent:
    """The event to append: data of a known type checked and taken as its payload class
    holds it (``EventRegistry.typed``), any other data as it was sent."""
    try:
        data = registry.typed(event.type, event.schema_version, event.data)
    except InvalidEvent as exc:
        raise InvalidEvent(f"events[{index}]: {exc.message}", index=index, **exc.details) from None
    return NewEvent(
        type=event.type,
        data=data,
        event_id=event_id,
        schema_version=event.schema_version,
        occurred_at=event.occurred_at or now,
        correlation_id=event.correlation_id or correlation_id,
        causation_id=event.causation_id,
    )


def new_events(
    body: AppendEvents,
    *,
    event_id: Callable[[int], uuid.UUID],
    correlation_id: str,
    now: datetime,
) -> list[NewEvent]:
    """The body's events; those without an ``event_id`` get ``event_id(index)``.

    ``InvalidEvent`` naming the first event whose data its known type refuses.
    """
    return [
        to_new_event(
            i, event, event_id=event.event_id or event_id(i), correlation_id=correlation_id, now=now
        )
        for i, event in enumerate(body.events)
    ]
