"""The log: event types, envelope, codec, stores, key names."""

from stageline.events.envelope import (
    ANY,
    NO_STREAM,
    DomainEvent,
    EventRegistry,
    NewEvent,
    RecordedEvent,
    new_event,
    registry,
)
from stageline.events.store import AppendRequest, AppendResult, EventStore, Outbox

__all__ = [
    "ANY",
    "NO_STREAM",
    "AppendRequest",
    "AppendResult",
    "DomainEvent",
    "EventRegistry",
    "EventStore",
    "NewEvent",
    "Outbox",
    "RecordedEvent",
    "new_event",
    "registry",
]
