"""The event envelope, typed event payloads and the registry of event types.

Pure: no I/O. A ``DomainEvent`` subclass is a frozen, past-tense payload with a
stable ``topic`` and ``schema_version``; ``NewEvent`` is what a writer hands to
a store; ``RecordedEvent`` is what every read returns.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import msgspec

from stageline.errors import InvalidEvent

ANY = -2
"""Expected version: append whatever the stream's version."""
NO_STREAM = -1
"""Expected version: the stream must not exist yet."""

EVENT_TYPE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.:-]{0,99}$"
"""What an event's ``type`` must look like: checked by HTTP (its body's model) and by every
store as it encodes an event (``codec.encode``)."""

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant
_SAFETY = uuid.SafeUUID.unknown


def uuid4() -> uuid.UUID:
    """A random (version 4) UUID, as ``uuid.uuid4()`` makes it, at a third of the cost.

    ``uuid.UUID()`` validates its argument in Python (~1.6 µs, most of an event's
    cost); the value built here is valid by construction. The bytes come from
    ``os.urandom``, as ``uuid.uuid4()``'s do: an id must not be guessable, or a
    client could take the id of an event not yet appended and have it dropped.
    """
    value = (int.from_bytes(os.urandom(16)) & _V4_CLEAR) | _V4_SET
    u = object.__new__(uuid.UUID)
    object.__setattr__(u, "int", value)
    object.__setattr__(u, "is_safe", _SAFETY)
    return u


class DomainEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every typed event payload.

    Subclasses set ``topic`` (the stable type string stored in the log) and
    ``schema_version``; defining the subclass registers it.
    """

    topic: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("topic"):
            registry.register(cls)


E = TypeVar("E", bound=DomainEvent)


class NewEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event not yet appended: the store assigns version, position and recorded_at."""

    type: str
    data: Any
    event_id: uuid.UUID = msgspec.field(default_factory=uuid4)
    schema_version: int = 1
    occurred_at: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))
    correlation_id: str | None = None
    causation_id: str | None = None


class RecordedEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One immutable entry of the log, as every read returns it.

    Events (new and recorded) are not tracked by the garbage collector
    (``gc=False``): they never refer back to themselves, and a busy process
    makes thousands a second, each of which would count towards a collection.
    """

    event_id: uuid.UUID
    type: str
    schema_version: int
    stream: str
    version: int
    position: int
    workspace: str
    occurred_at: datetime
    recorded_at: datetime
    correlation_id: str | None
    causation_id: str | None
    data: dict[str, Any]


def new_event(
    payload: DomainEvent,
    *,
    event_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> NewEvent:
    """Wrap a typed payload into a ``NewEvent`` ready to append."""
    return NewEvent(
        type=payload.topic,
        data=payload,
        event_id=event_id or uuid4(),
        schema_version=payload.schema_version,
        occurred_at=occurred_at or datetime.now(UTC),
        correlation_id=correlation_id,
        causation_id=causation_id,
    )


class EventRegistry:
    """Maps topic strings to payload classes, and upcasts old schema versions on read."""

    def __init__(self) -> None:
        self._types: dict[str, type[DomainEvent]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, cls: type[DomainEvent]) -> None:
        known = self._types.get(cls.topic)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"event topic {cls.topic!r} is taken by {known.__qualname__}")
        self._types[cls.topic] = cls

    def upcaster(self, topic: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a pure function turning ``from_version`` data into ``from_version + 1``."""

        def deco(fn: Upcaster) -> Upcaster:
            self._upcasters[(topic, from_version)] = fn
            return fn

        return deco

    def get(self, topic: str) -> type[DomainEvent] | None:
        return self._types.get(topic)

    def topics(self) -> list[str]:
        return sorted(self._types)

    def upcast(self, topic: str, schema_version: int, data: dict[str, Any]) -> dict[str, Any]:
        cls = self._types.get(topic)
        if cls is None:
            return data
        while schema_version < cls.schema_version:
            step = self._upcasters.get((topic, schema_version))
            if step is None:
                raise InvalidEvent(
                    f"no upcaster for {topic} v{schema_version}", type=topic, version=schema_version
                )
            data = step(data)
            schema_version += 1
        return data

    def check_version(self, topic: str, schema_version: int) -> None:
        """``InvalidEvent`` if ``schema_version`` of a known topic is newer than this code's:
        no upcaster reads it back, and its data may mean what this code cannot know."""
        cls = self._types.get(topic)
        if cls is not None and schema_version > cls.schema_version:
            raise InvalidEvent(
                f"{topic} schema_version {schema_version} is newer than this stageline's "
                f"{cls.schema_version}",
                type=topic,
            )

    def typed(self, topic: str, schema_version: int, data: Any) -> Any:
        """``data`` to store for an event: as its payload class holds it, for a known topic
        at its current schema version (a time as a time, not the text JSON has of it), so
        folds read it as the events stageline writes; else ``data`` itself (an older
        schema is history as it was written: reads upcast it).

        ``InvalidEvent`` if a known topic's data does not fit its schema, holds a field
        its current schema has not (storing the payload would drop it), or its schema
        version is newer than this server's.
        """
        cls = self._types.get(topic)
        if cls is None:
            return data
        self.check_version(topic, schema_version)
        try:
            payload = msgspec.convert(self.upcast(topic, schema_version, data), cls)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(f"{topic}: {exc}", type=topic) from exc
        if schema_version < cls.schema_version:
            return data
        unknown = sorted(set(data) - set(cls.__struct_fields__)) if isinstance(data, dict) else []
        if unknown:
            raise InvalidEvent(
                f"{topic}: no field {', '.join(map(repr, unknown))} in schema_version "
                f"{schema_version}",
                type=topic,
                fields=unknown,
            )
        return payload

    def decode(self, event: RecordedEvent, cls: type[E]) -> E:
        """The event's payload as ``cls``, upcast from older schema versions."""
        data = self.upcast(event.type, event.schema_version, event.data)
        return msgspec.convert(data, cls)


registry = EventRegistry()
"""The process-wide registry every ``DomainEvent`` subclass joins when defined."""
