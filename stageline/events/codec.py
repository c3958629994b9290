"""How an event is laid out inside the store: msgpack, compact, decoded in one pass."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from stageline.errors import InvalidEvent
from stageline.events.envelope import EVENT_TYPE_PATTERN, NewEvent, RecordedEvent
from stageline.events.finite import nonfinite


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


_TYPE = re.compile(EVENT_TYPE_PATTERN)
_types_seen: set[str] = set()
"""Types that matched ``_TYPE``: a set lookup is a tenth of a match."""
_TYPES_KEPT = 10_000
_FLOAT = b"\xcb"
"""msgpack's float 64, the only way floats are encoded: an event without it has none."""
_not_finite = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]").search
"""Finds a float 64 whose exponent bits are all set: NaN or ±infinity. The bytes may
come from elsewhere (a binary value's): an event with them has its data looked into."""
_AFTER_ID = 19
"""Where a stored event's bytes go on after its id (array header, bin8 header, 16 bytes):
random, they would hold ``_FLOAT`` one time in sixteen."""


def encode(event: NewEvent) -> bytes:
    """The bytes stored for an event (without stream, version, position: the store adds those).

    Raises ``InvalidEvent`` for an event no read could decode, or one JSON readers could
    not read as written (a ``type`` HTTP would refuse, a NaN or infinity in its data),
    before anything is written.
    """
    try:
        known = event.type in _types_seen
    except TypeError:  # unhashable: no type
        known = False
    if not known:
        _check_type(event.type)
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
        blob = _encoder.encode(
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
        where = _too_big(event) if isinstance(exc, OverflowError) else None
        reason = f"{where} is an integer beyond {_INTS}" if where else str(exc)
        raise InvalidEvent(f"event cannot be encoded: {reason}", type=event.type) from exc
    except RecursionError as exc:  # msgspec's own limit on nesting
        raise InvalidEvent(
            "event data is nested too deeply to be encoded", type=event.type
        ) from exc
    # memchr finds the first float (most events have none, or few), a regex the rest
    at = blob.find(_FLOAT, _AFTER_ID)
    if at >= 0 and _not_finite(blob, at) is not None:
        try:
            problem = nonfinite(data, "data")
        except RecursionError:  # deeper than Python recurses, not than msgspec encodes
            problem = "a value nested too deeply to be checked for NaN"
        if problem is not None:
            raise InvalidEvent(f"event data holds {problem}", type=event.type)
    return blob


_INTS = "those msgpack holds (-2**63 to 2**64 - 1)"


def _too_big(event: NewEvent) -> str | None:
    """Where in ``event`` (``schema_version``, ``data.x[2]``) the first integer msgpack
    cannot hold sits; None if there is none. Looked for only once encoding failed."""
    stack: list[tuple[str, object]] = [
        ("data", event.data),
        ("schema_version", event.schema_version),
    ]
    while stack:
        where, item = stack.pop()
        if isinstance(item, int):
            if not -(2**63) <= item < 2**64:
                return where
        elif isinstance(item, dict):
            stack.extend((f"{where}.{k}", v) for k, v in reversed(item.items()))
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, msgspec.Struct):
            fields = item.__struct_fields__
            stack.extend((f"{where}.{f}", getattr(item, f)) for f in reversed(fields))
    return None


def _check_type(event_type: object) -> None:
    """``InvalidEvent`` unless ``event_type`` is a type HTTP takes (``EVENT_TYPE_PATTERN``)."""
    if not isinstance(event_type, str) or _TYPE.fullmatch(event_type) is None:
        raise InvalidEvent(
            f"{event_type!r} is not an event type: one is a letter, then up to 99 letters, "
            f"digits or any of _.:- ({EVENT_TYPE_PATTERN})",
            type=event_type,
        )
    if len(_types_seen) < _TYPES_KEPT:
        _types_seen.add(event_type)


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
