"""Reading the API's live feed of the log (``GET /v1/log/feed``), a ``text/event-stream``."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Message", "SseParser"]

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Message:
    """One block of an event stream that carried data or an id."""

    last_id: str
    """The stream's last event id once this block is read (what ``Last-Event-ID`` sends)."""
    event: str
    """The block's event name, ``message`` when it names none."""
    data: str | None
    """Its data lines joined by newlines; None for a block without data (an id only)."""


class SseParser:
    """Reads ``text/event-stream`` bytes, in chunks cut anywhere, into ``Message``s.

    As ``EventSource`` does: lines end at CR, LF or CRLF only (not at the other breaks
    ``str.splitlines`` knows, which JSON strings may hold raw), and an ``id`` becomes
    ``last_id`` only once its block is complete, so a block cut off by a lost connection
    is read again in full. Comments and ``retry`` are skipped.
    """

    def __init__(self, last_id: str = "") -> None:
        self.last_id = last_id
        """What ``Last-Event-ID`` sends to resume after the last complete block."""
        self._id = last_id
        self._rest = b""
        self._after_cr = False
        self._event = ""
        self._data: list[str] | None = None
        self._has_id = False

    def feed(self, chunk: bytes) -> list[Message]:
        """The messages the stream completed with ``chunk``."""
        if self._after_cr and chunk.startswith(b"\n"):  # the CR that ended a line, then LF
            chunk = chunk[1:]
        self._after_cr = False
        if not chunk:
            return []
        *lines, self._rest = _LINE_END.split(self._rest + chunk)
        self._after_cr = chunk.endswith(b"\r")
        out = []
        for line in lines:
            message = self._line(line.decode("utf-8", errors="replace"))
            if message is not None:
                out.append(message)
        return out

    def _line(self, line: str) -> Message | None:
        if not line:  # the end of a block
            self.last_id = self._id
            message = None
            if self._data is not None or self._has_id:
                data = None if self._data is None else "\n".join(self._data)
                message = Message(self.last_id, self._event or "message", data)
            self._event, self._data, self._has_id = "", None, False
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data = [*(self._data or ()), value]
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id, self._has_id = value, True
        return None
