"""Exported logs (JSON Lines, one ``RecordedEvent`` a line, as ``stageline tail`` writes
them): read them back, and diff two of them stream by stream.

Pure: no I/O beyond the lines it is given.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from stageline.errors import InvalidArgument
from stageline.events.envelope import RecordedEvent

__all__ = [
    "DEFAULT_IGNORED",
    "LogDiff",
    "StreamDiff",
    "diff_logs",
    "iter_lines",
    "read_lines",
    "read_log",
]


class _Exact(RecordedEvent, frozen=True, kw_only=True, gc=False, forbid_unknown_fields=True):
    """An exported event whose every field the envelope has."""


_decoder = msgspec.json.Decoder(RecordedEvent)
_exact = msgspec.json.Decoder(_Exact)

DEFAULT_IGNORED = frozenset({"duration_ms", "started_at", "ended_at", "retry_at"})
"""Data keys ``diff_logs`` leaves out by default: they differ between any two runs."""


def read_log(lines: Iterable[str | bytes], *, source: str = "log") -> list[RecordedEvent]:
    """The events of an exported log, in the order given; blank lines are skipped.

    ``InvalidArgument`` naming the line for one that is not an event.
    """
    return [event for _, event in iter_lines(lines, source=source)]


def read_lines(
    lines: Iterable[str | bytes], *, source: str = "log", exact: bool = False
) -> list[tuple[int, RecordedEvent]]:
    """``read_log``, each event with the number of its line (from 1); ``exact`` refuses a
    line with a field the envelope has not, as well (what reading it would drop)."""
    return list(iter_lines(lines, source=source, exact=exact))


def iter_lines(
    lines: Iterable[str | bytes], *, source: str = "log", exact: bool = False
) -> Iterator[tuple[int, RecordedEvent]]:
    """``read_lines`` one line at a time, for a log too big to hold."""
    decoder = _exact if exact else _decoder
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise InvalidArgument(f"{source}, line {number}: not an event ({exc})") from None
        yield number, event


@dataclass(frozen=True)
class StreamDiff:
    """Where one stream of two logs first differs: the events there (None past an end)."""

    key: str
    streams: tuple[str, str]
    version: int
    a: dict[str, Any] | None
    b: dict[str, Any] | None


@dataclass
class LogDiff:
    same: int = 0
    """Streams whose events match."""
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    differ: list[StreamDiff] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not (self.only_a or self.only_b or self.differ)


def diff_logs(
    a: Sequence[RecordedEvent],
    b: Sequence[RecordedEvent],
    *,
    runs_by_input: bool = False,
    ignore: Iterable[str] = DEFAULT_IGNORED,
) -> LogDiff:
    """Compare two logs stream by stream: each event's type and data, in version order.

    Ids, positions and times of the envelope are not compared, nor the data keys in
    ``ignore``. Streams pair up by name; with ``runs_by_input`` a run's stream pairs
    with the run of the other log submitted with the same input (its ``id``, else its
    text), so runs of the same items through two stacks (old code, new code) can be
    compared, and ids naming runs or events are left out of the data too.
    """
    ignored = frozenset(ignore)
    if runs_by_input:
        ignored |= {"run_id", "dead_letter", "compensates", "cause", "started_id", "evidence"}
    left, right = _streams(a, runs_by_input), _streams(b, runs_by_input)
    out = LogDiff()
    for key in sorted(left.keys() | right.keys()):
        if key not in right:
            out.only_a.append(key)
            continue
        if key not in left:
            out.only_b.append(key)
            continue
        (name_a, events_a), (name_b, events_b) = left[key], right[key]
        for version in range(max(len(events_a), len(events_b))):
            ea = _shape(events_a[version], ignored) if version < len(events_a) else None
            eb = _shape(events_b[version], ignored) if version < len(events_b) else None
            if ea != eb:
                out.differ.append(StreamDiff(key, (name_a, name_b), version, ea, eb))
                break
        else:
            out.same += 1
    return out


def _streams(
    events: Sequence[RecordedEvent], runs_by_input: bool
) -> dict[str, tuple[str, list[RecordedEvent]]]:
    """Each stream's events in version order, under the key it pairs by."""
    by_stream: dict[str, list[RecordedEvent]] = defaultdict(list)
    for e in events:
        by_stream[e.stream].append(e)
    out: dict[str, tuple[str, list[RecordedEvent]]] = {}
    for name, stream in by_stream.items():
        stream.sort(key=lambda e: e.version)
        key = name
        if runs_by_input and stream[0].type == "RunSubmitted":
            key = "run of input " + _input_key(stream[0].data.get("input") or {})
        if key in out:  # two runs of the same input: the later ones by name
            key = f"{key} ({name})"
        out[key] = (name, stream)
    return out


def _input_key(item: dict[str, Any]) -> str:
    if item.get("id"):
        return repr(str(item["id"]))
    text = json.dumps(item, sort_keys=True, default=str).encode()
    return "sha1:" + hashlib.sha1(text, usedforsecurity=False).hexdigest()[:12]


def _shape(event: RecordedEvent, ignored: frozenset[str]) -> dict[str, Any]:
    return {"type": event.type, "data": _without(event.data, ignored)}


def _without(value: Any, ignored: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, ignored) for k, v in value.items() if k not in ignored}
    if isinstance(value, list):
        return [_without(v, ignored) for v in value]
    return value
