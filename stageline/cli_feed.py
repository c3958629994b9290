"""``stageline tail --follow``: the API's live feed of the log, resumed across lost connections.

The feed (``GET /v1/log/feed``) is read as Server-Sent Events; each event is printed as
the JSON line ``stageline tail`` prints for it. A connection that drops, or that the
server ends (it is stopping), is made again with ``Last-Event-ID`` set to the last id
received, so nothing is printed twice or skipped. Tries back off from
``FIRST_RECONNECT_DELAY`` to ``MAX_RECONNECT_DELAY`` seconds apart; once none has succeeded
for ``RECONNECT_GIVE_UP_SECONDS``, one line on stderr says why and the command exits.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, TextIO

import httpx
import typer

from stageline.cli_http import answer, say_error, unreachable

__all__ = [
    "FIRST_RECONNECT_DELAY",
    "MAX_RECONNECT_DELAY",
    "RECONNECT_GIVE_UP_SECONDS",
    "Message",
    "SseParser",
    "answer_after",
    "follow_log",
    "reconnect_delay",
]

FIRST_RECONNECT_DELAY = 0.25
"""Seconds before the first try after a connection failed; each next wait doubles."""
MAX_RECONNECT_DELAY = 4.0
"""The longest wait between two tries."""
RECONNECT_GIVE_UP_SECONDS = 60.0
"""How long tries go on failing before it gives up: well past a restart of ``stageline up``
(4-5 s with its drain), so following survives one."""
READ_TIMEOUT_SECONDS = 45.0
"""The feed sends a keep-alive every 15 s: three missed, the connection is taken as lost."""

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


def reconnect_delay(failures: int, failing_for: float) -> float | None:
    """Seconds to wait after ``failures`` connections in a row failed, the first of them
    ``failing_for`` seconds ago; None: give up."""
    if failing_for >= RECONNECT_GIVE_UP_SECONDS:
        return None
    backoff = FIRST_RECONNECT_DELAY * 2 ** min(failures - 1, 16)
    return min(backoff, MAX_RECONNECT_DELAY, RECONNECT_GIVE_UP_SECONDS - failing_for)


def answer_after(reply: httpx.Response, after: int) -> Any:
    """The JSON of ``reply``, as ``answer`` gives it; but an ``after`` past the log's head
    is told as the ``--after`` the user gave, not as the request's parameter or header."""
    if reply.status_code == 400:
        try:
            error = reply.json()["error"]
            head = error["details"]["head"]
        except (ValueError, KeyError, TypeError):
            return answer(reply)
        say_error(
            f"{reply.status_code} {error['code']}: --after {after} is past the workspace "
            f"log's head ({head})"
        )
        raise typer.Exit(1)
    return answer(reply)


def follow_log(url: str, workspace: str | None, after: int, out: TextIO) -> None:
    """Write the log's events past ``after`` to ``out`` as they land, one JSON line each.

    Runs until interrupted (exits 130), until the API answers a request error (exits 1,
    as ``answer`` does), or until it could not be reached, or kept answering 5xx, for
    ``RECONNECT_GIVE_UP_SECONDS`` (exits 2, or 1 for an answer).
    """
    headers = {"X-Workspace": workspace} if workspace else {}
    timeout = httpx.Timeout(10.0, read=READ_TIMEOUT_SECONDS)
    parser = SseParser(str(after))
    failures = 0
    first_failure = 0.0
    try:
        while True:
            lost: httpx.Response | httpx.HTTPError | None = None
            try:
                # resumed from the last id received; until one is, from --after
                resume = {"Last-Event-ID": parser.last_id} if parser.last_id != str(after) else {}
                with httpx.stream(
                    "GET",
                    url.rstrip("/") + "/v1/log/feed",
                    params={"after": after},
                    headers={**headers, **resume},
                    timeout=timeout,
                ) as reply:
                    if reply.status_code >= 400:
                        reply.read()
                        if reply.status_code < 500 and resume:  # asking again: the same
                            answer(reply)
                        if reply.status_code < 500:
                            answer_after(reply, after)
                        lost = reply
                    else:
                        failures = 0
                        _write_events(reply, parser, out)
            except httpx.HTTPError as exc:
                lost = exc
            failures += 1
            if failures == 1:
                first_failure = time.monotonic()
            delay = reconnect_delay(failures, time.monotonic() - first_failure)
            if delay is None:
                if isinstance(lost, httpx.Response):
                    answer(lost)
                raise unreachable(url, lost)
            time.sleep(delay)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _write_events(reply: httpx.Response, parser: SseParser, out: TextIO) -> None:
    """Each event of the feed as the JSON line ``stageline tail`` prints, until it ends."""
    for chunk in reply.iter_bytes():
        messages = parser.feed(chunk)
        for message in messages:
            if message.event == "log" and message.data is not None:
                out.write(json.dumps(json.loads(message.data)) + "\n")
        if messages:
            out.flush()
