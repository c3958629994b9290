"""How an event is laid out inside the store: msgpack, compact, decoded in one pass."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from stageline.events.envelope import NewEvent, RecordedEvent


class _Stored(msgspec.Struct, array_like=True):
    event_id: bytes
    type: str
    schema_version: int
    occurred_at: datetime
    correlation_id: str | None
    causation_id: str | None
    data: dict[str, Any]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Stored)


def encode(event: NewEvent) -> bytes:
    """The bytes stored for an event (without stream, version, position: the store adds those)."""
    return _encoder.encode(
        (
            event.event_id.bytes,
            event.type,
            event.schema_version,
            event.occurred_at,
            event.correlation_id,
            event.causation_id,
            event.data,
        )
    )


def decode(
    blob: bytes, *, workspace: str, stream: str, version: int, position: int, recorded_ms: int
) -> RecordedEvent:
    s = _decoder.decode(blob)
    return RecordedEvent(
        event_id=uuid.UUID(bytes=s.event_id),
        type=s.type,
        schema_version=s.schema_version,
        stream=stream,
        version=version,
        position=position,
        workspace=workspace,
        occurred_at=s.occurred_at,
        recorded_at=datetime.fromtimestamp(recorded_ms / 1000, UTC),
        correlation_id=s.correlation_id,
        causation_id=s.causation_id,
        data=s.data,
    )
