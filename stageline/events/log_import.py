"""Import of an exported log (JSON Lines, as ``stageline tail`` writes it) into a workspace:
each event as it was (id, stream, version, type, schema version, data, times, correlation
and causation) and, into an empty workspace, at the position it had.

``check_log`` validates a whole log without I/O, so a bad one writes nothing;
``plan_import`` says, also without I/O, what a workspace lacks of it or which of its
streams holds other events; ``import_log`` reads the workspace and appends the rest,
in log order, through any ``EventStore``.
"""

from __future__ import annotations

import hashlib
import uuid
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from stageline.errors import ConcurrencyError, Conflict, InvalidArgument
from stageline.events import codec
from stageline.events.envelope import EventRegistry, NewEvent, RecordedEvent, registry
from stageline.events.keys import check_stream, check_workspace
from stageline.events.store import MAX_EVENTS_PER_APPEND, AppendRequest, EventStore

__all__ = [
    "BATCH_EVENTS",
    "CheckedLog",
    "ImportPlan",
    "ImportResult",
    "LoggedEvent",
    "StreamDigest",
    "check_log",
    "import_log",
    "plan_import",
]

BATCH_EVENTS = 10_000
"""Events of one ``append_batch`` of an import (one round trip); progress is told after each."""

_json = msgspec.json.Encoder()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class LoggedEvent:
    """One event of a checked log: as read from its line, and as it will be appended."""

    line: int
    event: RecordedEvent
    new: NewEvent


@dataclass(slots=True)
class StreamDigest:
    """One stream's events, version by version from 0: each one's id, position, line (0 for
    none) and a digest of it (``_digest``); what an import keeps of a stream
    instead of its events."""

    ids: bytearray = field(default_factory=bytearray)
    positions: array[int] = field(default_factory=lambda: array("q"))
    lines: array[int] = field(default_factory=lambda: array("q"))
    digests: array[int] = field(default_factory=lambda: array("Q"))

    def __len__(self) -> int:
        return len(self.positions)

    def add(self, e: RecordedEvent, line: int = 0) -> None:
        self.ids += e.event_id.bytes
        self.positions.append(e.position)
        self.lines.append(line)
        self.digests.append(_digest(e))

    def event_id(self, version: int) -> uuid.UUID:
        return uuid.UUID(bytes=bytes(self.ids[16 * version : 16 * version + 16]))

    def version_of(self, event_id: uuid.UUID) -> int | None:
        """The version of the event with that id, if the stream has it."""
        at = self.ids.find(event_id.bytes)
        while at >= 0 and at % 16:
            at = self.ids.find(event_id.bytes, at + 1)
        return None if at < 0 else at // 16


Lines = Iterable[tuple[int, RecordedEvent]]
"""Numbered lines of a log, as ``read_lines`` gives them."""


@dataclass(frozen=True)
class CheckedLog:
    """A log ``check_log`` found importable: what it has of each stream, and what reads its
    events again (in log order) to import them."""

    source: str
    workspace: str | None
    """The workspace its events name (None when it has none)."""
    streams: dict[str, StreamDigest]
    """Each stream's events, streams in the order they first appear in the log."""
    events: int
    lines: Callable[[], Lines]
    types: EventRegistry = registry


@dataclass(frozen=True)
class ImportPlan:
    start: dict[str, int]
    """The version of each stream of the log from which the workspace lacks it."""
    missing: int
    """How many events the workspace lacks."""
    present: int
    """Events the workspace holds already: the same id at the same version of the stream,
    with the same content (their positions and times may differ)."""
    positions_kept: bool
    """Whether those it holds are at their positions in the log."""


@dataclass(frozen=True)
class ImportResult:
    workspace: str
    imported: int
    present: int
    streams: int
    positions_kept: bool
    """Whether every event of the log is at its position in the log: so whenever the
    workspace was empty and the log's positions run 1, 2, 3 ..."""


def check_log(
    lines: Sequence[tuple[int, RecordedEvent]] | Callable[[], Lines],
    *,
    source: str = "log",
    types: EventRegistry = registry,
    see: Callable[[RecordedEvent], None] | None = None,
) -> CheckedLog:
    """The events of a log (``read_lines``: numbered lines, or what reads them afresh each
    time it is called) if all of it can be imported; else ``InvalidArgument`` naming the
    first line that cannot (a line that is not an event first, as when it is all read
    before it is checked).

    A log can be imported when its events are of one workspace, in increasing
    positions, each stream's versions running on from 0 with no event id twice,
    each with a type, a schema version from 1, times with a timezone (``recorded_at``
    to the millisecond, all the log keeps) and data the store can hold; data of a type
    ``types`` knows must fit its schema, as for an append over HTTP
    (``EventRegistry.typed``: no newer schema version than this server's, no field the
    schema lacks). Data is taken as it is, but where the payload class of its type and
    schema version holds it exactly: then it is appended as that class, so a field the
    writer stored as a time is stored so again, not as the text JSON has of it.

    The log is read once here and kept as digests (``StreamDigest``), and once more by
    ``import_log``. ``see`` is given each event found importable, in log order (what a
    caller keeps of the log beside the digests).
    """
    again = lines if callable(lines) else lambda: lines
    streams: dict[str, StreamDigest] = {}
    workspace: str | None = None
    before: tuple[int, int] | None = None  # the last event's position and line
    count = 0
    ids: set[bytes] = set()  # of every event: a stream's own ids are only searched on a match
    read = iter(again())
    for line, e in read:
        # what makes a line wrong beside the lines before it
        why: str | None = None
        stream = streams.get(e.stream)
        expected = 0 if stream is None else len(stream)
        first = None
        if stream is not None and e.event_id.bytes in ids:
            first = stream.version_of(e.event_id)
        if workspace is not None and e.workspace != workspace:
            why = (
                f"an event of workspace {e.workspace!r} in a log of {workspace!r}: "
                "an import takes one workspace's log"
            )
        elif before is not None and e.position <= before[0]:
            why = f"position {e.position} after {before[0]} (line {before[1]}): positions must increase"
        elif e.version != expected:
            why = (
                f"version {e.version} of stream {e.stream!r}, expected {expected}: "
                "a stream's versions run on from 0, one by one, in log order"
            )
        elif first is not None and stream is not None:
            why = (
                f"event {e.event_id} is in stream {e.stream!r} already (line {stream.lines[first]})"
            )
        try:
            if why is not None:
                raise InvalidArgument(why)
            _new_event(e, types)
        except InvalidArgument as exc:
            for _ in read:  # a line that is not an event, further on, is named first
                pass
            raise InvalidArgument(f"{source}, line {line}: {exc.message}") from None
        workspace = e.workspace
        if stream is None:
            stream = streams[e.stream] = StreamDigest()
        stream.add(e, line)
        ids.add(e.event_id.bytes)
        before = (e.position, line)
        count += 1
        if see is not None:
            see(e)
    return CheckedLog(source, workspace, streams, count, again, types)


def _new_event(e: RecordedEvent, types: EventRegistry) -> NewEvent:
    """The event to append for ``e``; ``InvalidArgument`` for one the log cannot hold again."""
    try:
        check_stream(e.stream)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{exc.message} (not {e.stream!r})") from None
    if not e.type:
        raise InvalidArgument("an event needs a type")
    if e.schema_version < 1:
        raise InvalidArgument(f"schema_version {e.schema_version}: versions start at 1")
    if e.position < 1:
        raise InvalidArgument(f"position {e.position}: positions start at 1")
    for name, at in (("occurred_at", e.occurred_at), ("recorded_at", e.recorded_at)):
        if at.utcoffset() is None:
            raise InvalidArgument(f"{name} {at.isoformat()} has no timezone")
    if e.recorded_at.microsecond % 1000:
        raise InvalidArgument(
            f"recorded_at {e.recorded_at.isoformat()} is finer than a millisecond, "
            "which the log does not keep"
        )
    new = NewEvent(
        type=e.type,
        data=_typed(e, types),
        event_id=e.event_id,
        schema_version=e.schema_version,
        occurred_at=e.occurred_at,
        correlation_id=e.correlation_id,
        causation_id=e.causation_id,
    )
    codec.encode(new)  # what the store would refuse (InvalidEvent), before anything is written
    return new


def _typed(event: RecordedEvent, types: EventRegistry) -> Any:
    """``event.data``, as its payload class when that holds it exactly (see ``check_log``);
    ``InvalidEvent`` for data of a known type that its schema refuses, as an append over
    HTTP is refused (``EventRegistry.typed``): the projector's fold would refuse it too."""
    typed = types.typed(event.type, event.schema_version, event.data)
    if typed is event.data:  # an unknown type, or an older schema: history as it was written
        return event.data
    # defaults the data left out, or 1 taken for 1.0, would make the event another one
    return typed if _json.encode(typed) == _json.encode(event.data) else event.data


def plan_import(log: CheckedLog, workspace: str, held: Mapping[str, StreamDigest]) -> ImportPlan:
    """What ``workspace``, holding ``held`` (its events of the log's streams), lacks of
    ``log``; ``Conflict`` naming the stream, version and line where it holds another event
    (or the same id with other content) than the log."""
    start: dict[str, int] = {}
    missing = present = 0
    kept = True
    for stream, logged in log.streams.items():
        stored = held.get(stream, StreamDigest())
        start[stream] = min(len(stored), len(logged))
        for version in range(start[stream]):
            if stored.digests[version] != logged.digests[version]:
                there, here = stored.event_id(version), logged.event_id(version)
                what = f"event {there}" if there != here else "that event with other content"
                raise Conflict(
                    f"stream {stream!r} of workspace {workspace!r} holds other events than "
                    f"{log.source}: at version {version} it has {what}, the log has "
                    f"{here} (line {logged.lines[version]}); nothing was imported"
                )
            kept = kept and stored.positions[version] == logged.positions[version]
        present += start[stream]
        missing += len(logged) - start[stream]
    return ImportPlan(start, missing, present, kept)


def _digest(e: RecordedEvent) -> int:
    """A digest of an event as JSON has it (a time stored as such and the text of it in an
    exported log are the same), all but where it is and when it was made and recorded,
    which is how the store takes an event appended again: two events with the same one
    are one, but for one chance in 2**64. A decision the ontology reactor records again
    (the same id and data) as it reacts to what an import appended is made later."""
    text = _json.encode(_what(e))
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _what(e: RecordedEvent) -> RecordedEvent:
    return msgspec.structs.replace(
        e, position=0, workspace="", recorded_at=_EPOCH, occurred_at=_EPOCH
    )


def _missing(log: CheckedLog, plan: ImportPlan) -> Iterator[LoggedEvent]:
    """The events of ``log`` the workspace lacks, read again, in log order;
    ``InvalidArgument`` where the log is not as ``check_log`` found it."""
    count = 0
    for line, e in log.lines():
        logged = log.streams.get(e.stream)
        if (
            logged is None
            or not 0 <= e.version < len(logged)
            or logged.lines[e.version] != line
            or logged.positions[e.version] != e.position
            or logged.event_id(e.version) != e.event_id
        ):
            raise _Changed(f"{log.source}, line {line}: not as when it was checked")
        count += 1
        if e.version >= plan.start[e.stream]:
            try:
                if _digest(e) != logged.digests[e.version]:
                    raise InvalidArgument("not as when it was checked")
                new = _new_event(e, log.types)
            except InvalidArgument as exc:
                raise _Changed(f"{log.source}, line {line}: {exc.message}") from None
            yield LoggedEvent(line, e, new)
    if count != log.events:
        raise _Changed(f"{log.source}: {count} events, not {log.events} as when it was checked")


class _Changed(InvalidArgument):
    """A log read again is not as ``check_log`` found it."""


def _requests(
    missing: Iterable[LoggedEvent], workspace: str
) -> Iterator[tuple[AppendRequest, list[int]]]:
    """Appends of ``missing`` in order, each with the log positions of its events: one per
    run of a stream's events recorded at one time, each expecting the version before it."""
    run: list[LoggedEvent] = []

    def request() -> tuple[AppendRequest, list[int]]:
        first = run[0].event
        append = AppendRequest(
            workspace,
            first.stream,
            [x.new for x in run],
            first.version - 1,  # -1 for a stream's first events: NO_STREAM
            recorded_at=first.recorded_at,
        )
        return append, [x.event.position for x in run]

    for x in missing:
        if run and (
            x.event.stream != run[0].event.stream
            or x.event.recorded_at != run[0].event.recorded_at
            or len(run) == MAX_EVENTS_PER_APPEND
        ):
            yield request()
            run = []
        run.append(x)
    if run:
        yield request()


async def _held(
    store: EventStore, workspace: str, streams: Iterable[str]
) -> dict[str, StreamDigest]:
    """The workspace's events of ``streams``, as digests: its whole log is read, a page a
    round trip (one, when it is empty)."""
    wanted = set(streams)
    out: dict[str, StreamDigest] = defaultdict(StreamDigest)
    after = 0
    while page := await store.read_log(workspace, after=after, limit=1000):
        for e in page:
            if e.stream in wanted:
                out[e.stream].add(e)
        after = page[-1].position
    return out


async def import_log(
    store: EventStore,
    log: CheckedLog,
    workspace: str,
    *,
    progress: Callable[[int, int], None] | None = None,
    batch_events: int = BATCH_EVENTS,
    hold: Mapping[str, int] | None = None,
) -> ImportResult:
    """Append to ``workspace`` the events of ``log`` it lacks, in log order, keeping their
    ids, versions and times; what it holds already is left as it is, so importing again
    finishes an import that stopped part-way and otherwise writes nothing.

    Raises ``Conflict`` before writing anything when a stream of the workspace holds
    other events than the log (``plan_import``), or, if a writer changes such a stream
    meanwhile, when an append meets it (what was imported by then stays); and
    ``InvalidArgument`` if the log, read again, is not as ``check_log`` found it (what
    was imported by then stays).
    ``progress(done, total)`` is told of the events appended after each batch.
    ``hold`` (streams, each with a length) is held (``EventStore.hold_streams``) once the
    plan is made, before anything is appended, so no reader sees those streams unheld.
    """
    check_workspace(workspace)
    plan = plan_import(log, workspace, await _held(store, workspace, log.streams))
    if hold:
        await store.hold_streams(workspace, hold)
    total, done, kept = plan.missing, 0, plan.positions_kept
    batch: list[tuple[AppendRequest, list[int]]] = []
    size = 0

    async def send() -> None:
        nonlocal done, kept, size
        results = await store.append_batch([request for request, _ in batch])
        failed = None
        for (request, positions), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                failed = failed or (request, result)
                continue
            done += len(request.events)
            kept = kept and result.positions == positions
        if progress is not None:
            progress(done, total)
        if failed is not None:
            raise _stopped(workspace, *failed, done, total)
        batch.clear()
        size = 0

    try:
        for request in _requests(_missing(log, plan), workspace):
            batch.append(request)
            size += len(request[0].events)
            if size >= batch_events:
                await send()
    except _Changed as exc:
        raise InvalidArgument(
            f"{exc.message}: it changed while importing; {done} of {total} events were "
            "imported: import it again"
        ) from None
    if batch:
        await send()
    return ImportResult(workspace, done, plan.present, len(log.streams), kept)


def _stopped(
    workspace: str, request: AppendRequest, error: Exception, done: int, total: int
) -> Exception:
    """What an import that an append of it failed raises."""
    if isinstance(error, ConcurrencyError):
        return Conflict(
            f"stream {request.stream!r} of workspace {workspace!r} changed while importing "
            f"({error.message}); {done} of {total} events were imported: import again once "
            "nothing else writes it"
        )
    return error
