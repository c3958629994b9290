"""The ingest channel: publishers append events through Redis instead of HTTP.

A publisher adds an entry to the Redis Stream ``stageline:ingest``
(``keys.INGEST_CHANNEL``, on the broker) with one field ``__data__`` holding a
JSON object: the body of ``POST /v1/streams/{stream}/events`` plus ``stream``
and, optionally, ``workspace`` (default: the worker's ``STAGELINE_WORKSPACE``)::

    {"workspace": "acme", "stream": "order-42", "expected_version": "any",
     "events": [{"type": "OrderPlaced", "data": {"total": 3},
                 "event_id"?, "schema_version"?, "occurred_at"?,
                 "correlation_id"?, "causation_id"?}]}

either as plain JSON (``XADD stageline:ingest * __data__ '{...}'``) or in
FastStream's envelope (``await broker.publish({...}, stream="stageline:ingest")``),
whose ``correlation_id`` header then becomes the events' default correlation id
(else the entry id does). Events are checked and typed exactly as HTTP does
(``stageline.api.appends``), within the same size limit, and appended whole as HTTP
appends them (an entry that repeats some events the stream holds, or another event
under a held ``event_id``, is refused); an event without ``event_id`` gets one
derived from the entry id (``ingest_event_id``), so a redelivered entry appends
nothing twice.

This module is pure: it turns an entry's bytes into an append request, or the
reason it can never become one. The worker (``Worker.handle_ingest``) appends,
dead-letters and acknowledges.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from faststream.redis.parser.binary import BinaryMessageFormatV1
from pydantic import ValidationError

from stageline.api.appends import expected_version, new_events
from stageline.api.errors import validation_message
from stageline.api.schemas import IngestMessage
from stageline.errors import InvalidArgument, StagelineError
from stageline.events import keys
from stageline.events.store import AppendRequest
from stageline.settings import Settings

__all__ = ["IngestEntry", "ingest_event_id", "message_workspace", "parse", "unwrap"]

_NAMESPACE = uuid.UUID("6f1d2c3b-8a4e-4f7d-9b2c-5e0a1d3c7b84")
_LABEL_MAX = 200
MAX_BYTES: int = Settings.model_fields["max_body_bytes"].default
"""Largest body an entry may hold: ``STAGELINE_MAX_BODY_BYTES``'s default, as HTTP's."""
DATA_FIELD = b"__data__"


@dataclass(frozen=True)
class IngestEntry:
    """One ingest channel entry: its id, its ``__data__`` bytes, and the append it asks
    for, or (``request`` None) why it can never be appended."""

    entry_id: bytes
    raw: bytes
    request: AppendRequest | None
    workspace: str
    """The request's workspace; for one without a request, where to dead-letter it."""
    error: str = ""


def ingest_event_id(workspace: str, stream: str, entry_id: bytes, index: int) -> uuid.UUID:
    """The id of the ``index``-th event of ingest entry ``entry_id``: the same on every
    delivery of the entry, so the store drops a redelivery's events as duplicates."""
    return uuid.uuid5(_NAMESPACE, f"{workspace}\0{stream}\0{entry_id.decode()}\0{index}")


def unwrap(raw: bytes) -> tuple[bytes, dict[str, Any]]:
    """The body and headers of a ``__data__`` value: FastStream's envelope, or plain bytes."""
    return BinaryMessageFormatV1.parse(raw)


def parse(
    entry_id: bytes,
    fields: Mapping[bytes, bytes],
    *,
    default_workspace: str,
    now: datetime,
    max_bytes: int = MAX_BYTES,
) -> IngestEntry:
    """The append the entry ``entry_id`` with ``fields`` asks for, or why it cannot be one:
    among others, a body (JSON) over ``max_bytes``, which HTTP refuses with 413."""
    raw = fields.get(DATA_FIELD)
    if raw is None:  # kept whole, as JSON, to be read in its dead letter
        kept = msgspec.json.encode(
            {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
        )
        error = f"entry has no {DATA_FIELD.decode()} field, only: {sorted(fields)!r}"[:500]
        return IngestEntry(entry_id, kept, None, default_workspace, error)
    body, headers = unwrap(raw)
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        return IngestEntry(entry_id, raw, None, default_workspace, f"malformed JSON: {exc}")
    workspace = default_workspace
    if isinstance(document, dict) and isinstance(document.get("workspace"), str):
        workspace = document["workspace"]
    try:
        if len(body) > max_bytes:
            raise InvalidArgument(
                f"entry is {len(body)} bytes, over the {max_bytes} an append takes "
                "(STAGELINE_MAX_BODY_BYTES, as over HTTP)"
            )
        message = IngestMessage.model_validate(document)
        keys.check_workspace(workspace)
        keys.check_outside_stream(message.stream)
        events = new_events(
            message,
            event_id=lambda i: ingest_event_id(workspace, message.stream, entry_id, i),
            correlation_id=_correlation_id(headers, entry_id),
            now=now,
        )
    except ValidationError as exc:
        error = validation_message(exc.errors(include_url=False))
    except StagelineError as exc:
        error = exc.message
    else:
        request = AppendRequest(
            workspace, message.stream, events, expected_version(message), whole=True
        )
        return IngestEntry(entry_id, raw, request, workspace)
    if not keys.is_workspace(workspace):
        workspace = default_workspace
    return IngestEntry(entry_id, raw, None, workspace, error)


def message_workspace(raw: bytes) -> str | None:
    """The workspace an entry's ``__data__`` names, None if it names none (or is no object)."""
    try:
        document = msgspec.json.decode(unwrap(raw)[0])
    except msgspec.DecodeError:
        return None
    workspace = document.get("workspace") if isinstance(document, dict) else None
    return workspace if isinstance(workspace, str) else None


def _correlation_id(headers: dict[str, Any], entry_id: bytes) -> str:
    value = headers.get("correlation_id")
    if isinstance(value, str) and 0 < len(value) <= _LABEL_MAX:
        return value
    return entry_id.decode()
