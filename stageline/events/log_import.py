"""Import of an exported log (JSON Lines, as ``stageline tail`` writes it) into a workspace:
each event as it was (id, stream, version, type, schema version, data, times, correlation
and causation) and, into an empty workspace, at the position it had.

``check_log`` validates a whole log without I/O, so a bad one writes nothing;
``plan_import`` says, also without I/O, what a workspace lacks of it or which of its
streams holds other events; ``import_log`` reads the workspace and appends the rest,
in log order, through any ``EventStore``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from stageline.errors import ConcurrencyError, Conflict, InvalidArgument, InvalidEvent
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


@dataclass(frozen=True)
class CheckedLog:
    """A log ``check_log`` found importable: its events in log (position) order."""

    source: str
    workspace: str | None
    """The workspace its events name (None when it has none)."""
    events: list[LoggedEvent]

    def streams(self) -> dict[str, list[LoggedEvent]]:
        """Each stream's events, in version order."""
        out: dict[str, list[LoggedEvent]] = defaultdict(list)
        for logged in self.events:
            out[logged.event.stream].append(logged)
        return dict(out)


@dataclass(frozen=True)
class ImportPlan:
    missing: list[LoggedEvent]
    """The events the workspace lacks, in log order: each stream's from some version on."""
    present: int
    """Events the workspace holds already: the same id at the same version of the stream,
    with the same content (their positions and recorded times may differ)."""
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
    lines: Iterable[tuple[int, RecordedEvent]],
    *,
    source: str = "log",
    types: EventRegistry = registry,
) -> CheckedLog:
    """The events of a log (``read_lines``: numbered lines) if all of it can be imported;
    else ``InvalidArgument`` naming the first line that cannot.

    A log can be imported when its events are of one workspace, in increasing
    positions, each stream's versions running on from 0 with no event id twice,
    each with a type, a schema version from 1 (no newer than this server's, for a type
    ``types`` knows), times with a timezone (``recorded_at`` to the millisecond, all
    the log keeps) and data the store can hold. Data is taken as it is, but where the
    payload class of its type and schema version holds it exactly: then it is appended
    as that class, so a field the writer stored as a time is stored so again, not as
    the text JSON has of it.
    """
    events: list[LoggedEvent] = []
    workspace: str | None = None
    versions: dict[str, int] = {}
    seen: dict[tuple[str, uuid.UUID], int] = {}  # (stream, event id) -> line
    for line, e in lines:
        # what makes a line wrong beside the lines before it
        why: str | None = None
        before = events[-1] if events else None
        expected = versions.get(e.stream, 0)
        first = seen.setdefault((e.stream, e.event_id), line)
        if workspace is not None and e.workspace != workspace:
            why = (
                f"an event of workspace {e.workspace!r} in a log of {workspace!r}: "
                "an import takes one workspace's log"
            )
        elif before is not None and e.position <= before.event.position:
            why = (
                f"position {e.position} after {before.event.position} (line {before.line}): "
                "positions must increase"
            )
        elif e.version != expected:
            why = (
                f"version {e.version} of stream {e.stream!r}, expected {expected}: "
                "a stream's versions run on from 0, one by one, in log order"
            )
        elif first != line:
            why = f"event {e.event_id} is in stream {e.stream!r} already (line {first})"
        try:
            if why is not None:
                raise InvalidArgument(why)
            new = _new_event(e, types)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{source}, line {line}: {exc.message}") from None
        workspace = e.workspace
        versions[e.stream] = expected + 1
        events.append(LoggedEvent(line, e, new))
    return CheckedLog(source, workspace, events)


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
    """``event.data``, as its payload class when that holds it exactly (see ``check_log``)."""
    cls = types.get(event.type)
    # an older schema is history as it was written: no class holds it, readers upcast it
    if cls is None or event.schema_version < cls.schema_version:
        return event.data
    if event.schema_version > cls.schema_version:
        raise InvalidEvent(
            f"{event.type} schema_version {event.schema_version} is newer than this "
            f"server's {cls.schema_version}"
        )
    try:
        typed = types.typed(event.type, event.schema_version, event.data)
    except InvalidEvent:  # so it was written, so it stays
        return event.data
    # defaults the data left out, or 1 taken for 1.0, would make the event another one
    return typed if _json.encode(typed) == _json.encode(event.data) else event.data


def plan_import(
    log: CheckedLog, workspace: str, held: Mapping[str, Sequence[RecordedEvent]]
) -> ImportPlan:
    """What ``workspace``, holding ``held`` (its events of the log's streams, each stream's
    in version order), lacks of ``log``; ``Conflict`` naming the stream, version and line
    where it holds another event (or the same id with other content) than the log."""
    missing: list[LoggedEvent] = []
    present = 0
    kept = True
    for stream, logged in log.streams().items():
        stored = held.get(stream, ())
        for x in logged[: len(stored)]:
            there = stored[x.event.version]
            if not _same(there, x.event):
                what = (
                    f"event {there.event_id}"
                    if there.event_id != x.event.event_id
                    else "that event with other content"
                )
                raise Conflict(
                    f"stream {stream!r} of workspace {workspace!r} holds other events than "
                    f"{log.source}: at version {x.event.version} it has {what}, the log has "
                    f"{x.event.event_id} (line {x.line}); nothing was imported"
                )
            present += 1
            kept = kept and there.position == x.event.position
        missing.extend(logged[len(stored) :])
    missing.sort(key=lambda x: x.event.position)
    return ImportPlan(missing, present, kept)


def _same(a: RecordedEvent, b: RecordedEvent) -> bool:
    """Whether two events are one, as JSON has them (a time stored as such and the text of
    it in an exported log are the same): all alike but where they are and when they were
    recorded, which is how the store takes an event appended again."""
    return _json.encode(_what(a)) == _json.encode(_what(b))


def _what(e: RecordedEvent) -> RecordedEvent:
    return msgspec.structs.replace(e, position=0, workspace="", recorded_at=_EPOCH)


def _requests(
    missing: Sequence[LoggedEvent], workspace: str
) -> list[tuple[AppendRequest, list[int]]]:
    """Appends of ``missing`` in order, each with the log positions of its events: one per
    run of a stream's events recorded at one time, each expecting the version before it."""
    out: list[tuple[AppendRequest, list[int]]] = []
    run: list[LoggedEvent] = []

    def flush() -> None:
        first = run[0].event
        request = AppendRequest(
            workspace,
            first.stream,
            [x.new for x in run],
            first.version - 1,  # -1 for a stream's first events: NO_STREAM
            recorded_at=first.recorded_at,
        )
        out.append((request, [x.event.position for x in run]))

    for x in missing:
        if run and (
            x.event.stream != run[0].event.stream
            or x.event.recorded_at != run[0].event.recorded_at
            or len(run) == MAX_EVENTS_PER_APPEND
        ):
            flush()
            run = []
        run.append(x)
    if run:
        flush()
    return out


async def _held(
    store: EventStore, workspace: str, streams: Iterable[str]
) -> dict[str, list[RecordedEvent]]:
    """The workspace's events of ``streams``, each stream's in version order: its whole log
    is read, a page a round trip (one, when it is empty)."""
    wanted = set(streams)
    out: dict[str, list[RecordedEvent]] = defaultdict(list)
    after = 0
    while page := await store.read_log(workspace, after=after, limit=1000):
        for e in page:
            if e.stream in wanted:
                out[e.stream].append(e)
        after = page[-1].position
    return out


async def import_log(
    store: EventStore,
    log: CheckedLog,
    workspace: str,
    *,
    progress: Callable[[int, int], None] | None = None,
    batch_events: int = BATCH_EVENTS,
) -> ImportResult:
    """Append to ``workspace`` the events of ``log`` it lacks, in log order, keeping their
    ids, versions and times; what it holds already is left as it is, so importing again
    finishes an import that stopped part-way and otherwise writes nothing.

    Raises ``Conflict`` before writing anything when a stream of the workspace holds
    other events than the log (``plan_import``), or, if a writer changes such a stream
    meanwhile, when an append meets it (what was imported by then stays).
    ``progress(done, total)`` is told of the events appended after each batch.
    """
    check_workspace(workspace)
    streams = log.streams()
    plan = plan_import(log, workspace, await _held(store, workspace, streams))
    requests = _requests(plan.missing, workspace)
    total, done, kept = len(plan.missing), 0, plan.positions_kept
    start = 0
    while start < len(requests):
        end, size = start, 0
        while end < len(requests) and (size < batch_events or end == start):
            size += len(requests[end][0].events)
            end += 1
        batch = requests[start:end]
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
        start = end
    return ImportResult(workspace, done, plan.present, len(streams), kept)


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
