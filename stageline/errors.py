"""One root error with a family per layer; the HTTP layer maps them in one place."""

from __future__ import annotations

from typing import Any


class StagelineError(Exception):
    """Root of every error stageline raises on purpose.

    ``code`` is the stable machine-readable name used in the HTTP error envelope.
    """

    code = "INTERNAL"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        if not self.details:
            return self.message
        extra = ", ".join(f"{k}={v!r}" for k, v in self.details.items())
        return f"{self.message} ({extra})"


class InvalidArgument(StagelineError):
    """The caller sent something stageline cannot accept; nothing was written."""

    code = "INVALID_ARGUMENT"


class InvalidEvent(InvalidArgument):
    """An event's type or data does not match its declared schema."""


class NotFound(StagelineError):
    code = "NOT_FOUND"


class Conflict(StagelineError):
    code = "CONFLICT"


class ConcurrencyError(Conflict):
    """An append's expected version did not match the stream's actual version."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream!r} is at version {actual}, expected {expected}",
            stream=stream,
            expected=expected,
            actual=actual,
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


class PartialRetry(Conflict):
    """A whole append (``whole=True``) whose events the stream holds some of, not all:
    it repeats only part of an earlier one. Nothing was written."""

    def __init__(self, stream: str, version: int, *, index: int, event_id: str, at: int) -> None:
        super().__init__(
            f"stream {stream!r} holds events[{index}] (event_id {event_id}, at version {at}) "
            "but not all of these events: an append is all new events or a repeat of events "
            "the stream holds, so nothing was appended; send the new events on their own",
            stream=stream,
            actual=version,
            index=index,
            event_id=event_id,
            version=at,
        )
        self.stream = stream
        self.actual = version


class EventIdReused(Conflict):
    """A whole append (``whole=True``) that repeats events the stream holds, one of them
    with other content under the same id: another event, not a retry. Nothing was written."""

    def __init__(
        self, stream: str, *, index: int, event_id: str, at: int, differs: list[str]
    ) -> None:
        super().__init__(
            f"events[{index}] has event_id {event_id}, which stream {stream!r} holds at "
            f"version {at} for an event with another {' and '.join(differs)}: nothing was "
            "appended; an event id names one event, give this one its own",
            stream=stream,
            index=index,
            event_id=event_id,
            version=at,
            differs=differs,
        )
        self.stream = stream


class ViewOfNewerVersion(Conflict):
    """A view holds what a newer stageline wrote (its shape is past this version's): this
    version neither writes nor drops it. Nothing was written."""

    def __init__(self, workspace: str, projection: str, *, shape: int, own: int) -> None:
        super().__init__(
            f"the {projection!r} view of workspace {workspace!r} was written by a newer "
            f"stageline (its shape {shape}; this version writes shape {own}): this version "
            "leaves it alone; run the newer version, or stop it and rebuild the view with "
            f"this one (`stageline projections rebuild --projection {projection}`)",
            workspace=workspace,
            projection=projection,
            shape=shape,
            own=own,
        )


class Unavailable(StagelineError):
    """A dependency (Redis, FalkorDB) is down, or a wait timed out."""

    code = "UNAVAILABLE"
