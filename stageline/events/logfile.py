"""Exported logs (JSON Lines, one ``RecordedEvent`` a line, as ``stageline tail`` writes
them): read them back, and diff two of them stream by stream.

Pure: no I/O beyond the lines it is given.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from stageline.errors import InvalidArgument
from stageline.events.envelope import RecordedEvent

__all__ = [
    "DEFAULT_IGNORED",
    "Events",
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
_sorted = msgspec.json.Encoder(order="sorted")

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


Events = Sequence[RecordedEvent] | Callable[[], Iterable[RecordedEvent]]
"""A log ``diff_logs`` reads twice: its events, or what gives them afresh each time called."""


def diff_logs(
    a: Events,
    b: Events,
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

    Each log is read twice and never held: once for a digest of each event, once more
    for the events where streams first differ (``InvalidArgument`` if one is not there
    then: the log changed in between).
    """
    ignored = frozenset(ignore)
    if runs_by_input:
        ignored |= {"run_id", "dead_letter", "compensates", "cause", "started_id", "evidence"}
    left = _paired(_digests(_events(a), ignored, runs_by_input))
    right = _paired(_digests(_events(b), ignored, runs_by_input))
    out = LogDiff()
    # where each differing stream first differs: its key, version, and the index of the
    # event there in each log's stream, in log order (None past its end)
    firsts: list[tuple[str, int, int | None, int | None]] = []
    for key in sorted(left.keys() | right.keys()):
        if key not in right:
            out.only_a.append(key)
            continue
        if key not in left:
            out.only_b.append(key)
            continue
        sa, sb = left[key], right[key]
        da, db = sa.in_version_order(), sb.in_version_order()
        if da == db:
            out.same += 1
            continue
        version = next(
            (v for v, (x, y) in enumerate(zip(da, db, strict=False)) if x != y),
            min(len(da), len(db)),
        )
        firsts.append((key, version, sa.log_index(version), sb.log_index(version)))
    shapes_a = _shapes(_events(a), {(left[k].name, i) for k, _, i, _ in firsts}, ignored)
    shapes_b = _shapes(_events(b), {(right[k].name, i) for k, _, _, i in firsts}, ignored)
    for key, version, ia, ib in firsts:
        name_a, name_b = left[key].name, right[key].name
        out.differ.append(
            StreamDiff(
                key,
                (name_a, name_b),
                version,
                shapes_a.get((name_a, ia)) if ia is not None else None,
                shapes_b.get((name_b, ib)) if ib is not None else None,
            )
        )
    return out


def _events(log: Events) -> Iterable[RecordedEvent]:
    return log() if callable(log) else log


@dataclass(slots=True)
class _Stream:
    """What a first reading keeps of one stream of a log: each event's version and digest,
    in log order, and how the stream pairs with runs of the other log."""

    name: str
    versions: array[int] = field(default_factory=lambda: array("q"))
    digests: array[int] = field(default_factory=lambda: array("Q"))
    run_of: str | None = None
    """The key of its input when its first event (in version order) is a RunSubmitted."""
    order: list[int] | None = None

    def in_version_order(self) -> array[int]:
        """Its digests in version order (a stable sort, as the log has them when it can)."""
        if self.order is None:
            if all(x <= y for x, y in zip(self.versions, self.versions[1:], strict=False)):
                self.order = []
            else:
                self.order = sorted(range(len(self.versions)), key=self.versions.__getitem__)
        if not self.order:
            return self.digests
        return array("Q", (self.digests[i] for i in self.order))

    def log_index(self, version: int) -> int | None:
        """Which of its events, in log order, is at ``version`` in version order."""
        if version >= len(self.versions):
            return None
        return self.order[version] if self.order else version


def _digests(
    events: Iterable[RecordedEvent], ignored: frozenset[str], runs_by_input: bool
) -> dict[str, _Stream]:
    """Each stream of a log, by name, in the order streams first appear."""
    out: dict[str, _Stream] = {}
    lowest: dict[str, int] = {}
    for e in events:
        stream = out.get(e.stream)
        if stream is None:
            stream = out[e.stream] = _Stream(e.stream)
        if runs_by_input and (e.stream not in lowest or e.version < lowest[e.stream]):
            lowest[e.stream] = e.version
            stream.run_of = None
            if e.type == "RunSubmitted":
                stream.run_of = "run of input " + _input_key(e.data.get("input") or {})
        stream.versions.append(e.version)
        stream.digests.append(_digest(e, ignored))
    return out


def _paired(streams: dict[str, _Stream]) -> dict[str, _Stream]:
    """The streams under the key each pairs by: runs of the same input by their order in
    the log (the second is ``... #2``), so the same items submitted twice to two stacks
    pair up."""
    out: dict[str, _Stream] = {}
    runs: Counter[str] = Counter()
    for name, stream in streams.items():
        key = stream.run_of or name
        if stream.run_of is not None:
            runs[key] += 1
            if runs[key] > 1:
                key = f"{key} #{runs[key]}"
        out[key] = stream
    return out


def _shapes(
    events: Iterable[RecordedEvent], wanted: set[tuple[str, int | None]], ignored: frozenset[str]
) -> dict[tuple[str, int | None], dict[str, Any]]:
    """The shapes of the ``wanted`` events: (stream, index among its events in log order)."""
    out: dict[tuple[str, int | None], dict[str, Any]] = {}
    wanted = {w for w in wanted if w[1] is not None}
    names = {name for name, _ in wanted}
    seen: dict[str, int] = defaultdict(int)
    for e in events:
        if len(out) == len(wanted):
            break
        if e.stream not in names:
            continue
        at = (e.stream, seen[e.stream])
        seen[e.stream] += 1
        if at in wanted:
            out[at] = _shape(e, ignored)
    if missing := wanted - out.keys():
        name, i = min(missing, key=str)
        raise InvalidArgument(
            f"stream {name!r} has no event {i} (in log order) on reading the log again: "
            "it changed while it was read"
        )
    return out


def _input_key(item: dict[str, Any]) -> str:
    if item.get("id"):
        return repr(str(item["id"]))
    text = json.dumps(item, sort_keys=True, default=str).encode()
    return "sha1:" + hashlib.sha1(text, usedforsecurity=False).hexdigest()[:12]


def _shape(event: RecordedEvent, ignored: frozenset[str]) -> dict[str, Any]:
    return {"type": event.type, "data": _without(event.data, ignored)}


def _digest(event: RecordedEvent, ignored: frozenset[str]) -> int:
    """A digest of ``_shape(event)``: equal for shapes Python finds equal (1, 1.0 and True
    alike; keys in any order), and, but for one chance in 2**64, only for them."""
    text = _sorted.encode((event.type, _canonical(event.data, ignored)))
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _canonical(value: Any, ignored: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v, ignored) for k, v in value.items() if k not in ignored}
    if isinstance(value, list):
        return [_canonical(v, ignored) for v in value]
    if isinstance(value, bool) or (isinstance(value, float) and value.is_integer()):
        value = int(value)
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return {"\0int": str(value)}  # past what JSON encoders take
    return value


def _without(value: Any, ignored: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, ignored) for k, v in value.items() if k not in ignored}
    if isinstance(value, list):
        return [_without(v, ignored) for v in value]
    return value
