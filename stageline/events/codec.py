"""How an event is laid out inside the store: msgpack, compact, decoded in one pass."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from stageline.errors import InvalidEvent
from stageline.events.envelope import NewEvent, RecordedEvent


class _Stored(msgspec.Struct, array_like=True, gc=False):  # short-lived, holds no cycle
    event_id: uuid.UUID  # stored as its 16 bytes; msgspec makes the UUID (3x faster than uuid)
    type: str
    schema_version: int
    occurred_at: datetime
    correlation_id: str | None
    causation_id: str | None
    data: dict[str, Any]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Stored)
_many = msgspec.msgpack.Decoder(list[_Stored])
_data = msgspec.msgpack.Decoder(dict[str, Any])


def encode(event: NewEvent) -> bytes:
    """The bytes stored for an event (without stream, version, position: the store adds those).

    Raises ``InvalidEvent`` for an event no read could decode, before anything is written.
    """
    data = event.data
    # reads decode ``data`` as dict[str, Any]: anything else would poison the log
    if isinstance(data, msgspec.Struct):
        fits = not data.__struct_config__.array_like
    else:
        fits = isinstance(data, dict) and all(isinstance(k, str) for k in data)
    if not fits:
        raise InvalidEvent(
            "event data must be a mapping with string keys or a DomainEvent", type=event.type
        )
    # a naive datetime would be stored as a string and read back naive, its zone lost
    if event.occurred_at.tzinfo is None:
        raise InvalidEvent("occurred_at must be timezone-aware", type=event.type)
    try:
        return _encoder.encode(
            (
                event.event_id.bytes,
                event.type,
                event.schema_version,
                event.occurred_at,
                event.correlation_id,
                event.causation_id,
                data,
            )
        )
    except (TypeError, ValueError, OverflowError) as exc:  # ValueError: e.g. lone surrogates
        raise InvalidEvent(f"event cannot be encoded: {exc}", type=event.type) from exc


def stored_data(data: Any) -> dict[str, Any]:
    """``data`` of an event as a read returns it once stored: a payload as a mapping of its
    fields, a time as a time in UTC (the zone it was written with is not kept)."""
    return _data.decode(_encoder.encode(data))


def decode_many(blobs: list[bytes]) -> list[Any]:
    """The stored parts of many events (``event_id``, ``type``, ``schema_version``,
    ``occurred_at``, ``correlation_id``, ``causation_id``, ``data``), by one decoder call:
    the blobs joined into one msgpack array (a 32-bit length, then the elements)."""
    return _many.decode(b"\xdd" + len(blobs).to_bytes(4, "big") + b"".join(blobs))


def decode(
    blob: bytes, *, workspace: str, stream: str, version: int, position: int, recorded_ms: int
) -> RecordedEvent:
    s = _decoder.decode(blob)
    return RecordedEvent(
        event_id=s.event_id,
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
